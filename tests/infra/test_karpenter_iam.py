"""Karpenter's controller policy, as each stack deploys it, against the requests Karpenter 1.14.1
makes, and against upstream's policy at that version.

The requests are read from karpenter-provider-aws v1.14.1: `providers/launchtemplate` (CreateLaunchTemplate
tagged with the launch tags), `providers/instance` (an instant CreateFleet naming an existing launch
template, tag specifications for instance, volume and fleet), `controllers/nodeclass/validation.go`
(the CreateFleet and RunInstances dry runs whose failure marks an EC2NodeClass
`CreateFleetAuthCheckFailed`; its launch tags carry an empty `karpenter.sh/nodepool`),
`controllers/nodeclaim/tagging` (Name and nodeclaim tags on a running instance), `providers/instanceprofile`,
`providers/instancestatus` (DescribeInstanceStatus), `providers/arczonalshift`, pricing, SSM and the
interruption queue. AWS authorizes a request once per resource it touches: resources being created see
the request's tags (`aws:RequestTag/*`), existing ones (the launch template, subnets, the AMI) only their
own (`aws:ResourceTag/*`). That is the distinction the original policy missed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from infra.mocks import MOCK_ACCOUNT_ID
from tests.infra.iam_eval import ALLOW, Request, evaluate, pattern_covers, request_tags, resource_tags

UPSTREAM = Path(__file__).resolve().parent / "fixtures" / "karpenter-1.14.1-getting-started-cloudformation.yaml"
"""Upstream's getting-started template (aws/karpenter-provider-aws at tag v1.14.1,
website/content/en/docs/getting-started/getting-started-with-karpenter/cloudformation.yaml, Apache-2.0),
byte for byte; sha256 7ffeb01f..., checked below."""
UPSTREAM_SHA256 = "7ffeb01f04b5da482ef43087830de00a476098416e3b4576c38239ef1b0bef4b"
REGION = "us-east-1"

# Every place our policy is narrower than upstream's, with the reason. A narrowing missing here
# fails the test, and so does a reason whose narrowing is gone.
NARROWER_THAN_UPSTREAM = {
    ("AllowPassingInstanceRole", "condition StringEquals iam:PassedToService", "ec2.amazonaws.com.cn"):
        "the program is for the commercial partition only (every ARN it writes is arn:aws:...), where the "
        "China service principal cannot be passed to",
}


def test_upstream_reference_is_the_pinned_file():
    assert hashlib.sha256(UPSTREAM.read_bytes()).hexdigest() == UPSTREAM_SHA256


def _stack_facts(run) -> dict:
    by_type = {}
    for urn, outputs in run.component_outputs.items():
        by_type[urn.split("$")[-1].split("::")[0]] = outputs
    cluster = by_type["tensile:infra:Cluster"]
    return {"cluster": cluster["name"], "node_role_arn": f"arn:aws:iam::{MOCK_ACCOUNT_ID}:role/{cluster['karpenterNodeRole']}",
            "queue_arn": by_type["tensile:infra:InterruptionQueue"]["queueArn"]}


def deployed_policy(run) -> dict:
    return json.loads(run.named("karpenter-controller-policy")["inputs"]["policy"])


def upstream_policy(*, cluster: str, node_role_arn: str, queue_arn: str) -> dict:
    """The six controller policies of upstream's getting-started template, as one document."""
    class Loader(yaml.SafeLoader):
        pass

    for tag in ("!Sub", "!Ref", "!GetAtt"):
        Loader.add_constructor(tag, lambda loader, node: loader.construct_scalar(node)
                               if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node))
    template = yaml.load(UPSTREAM.read_text(), Loader=Loader)
    values = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": MOCK_ACCOUNT_ID, "ClusterName": cluster,
              "KarpenterNodeRole.Arn": node_role_arn, "KarpenterInterruptionQueue.Arn": queue_arn}
    statements = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::ManagedPolicy" or "Controller" not in resource["Properties"]["ManagedPolicyName"]:
            continue
        text = re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], resource["Properties"]["PolicyDocument"])
        statements += json.loads(text)["Statement"]
    return {"Version": "2012-10-17", "Statement": statements}


def karpenter_requests(run) -> list[Request]:
    """What Karpenter 1.14.1 asks AWS for while it runs this stack's NodePools."""
    facts = _stack_facts(run)
    cluster, account = facts["cluster"], MOCK_ACCOUNT_ID
    ec2 = f"arn:aws:ec2:{REGION}:{account}"
    cluster_arn = f"arn:aws:eks:{REGION}:{account}:cluster/{cluster}"
    classes = {r["inputs"]["metadata"]["name"]: r["inputs"]["spec"] for r in run.resources
               if r["type"] == "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"}
    pools = [(r["inputs"]["metadata"]["name"], r["inputs"]["spec"]["template"]["spec"]["nodeClassRef"]["name"])
             for r in run.resources if r["type"] == "kubernetes:karpenter.sh/v1:NodePool"]
    assert pools and classes, "the stack declares no NodePool: nothing to check"
    discovered = {"karpenter.sh/discovery": cluster}
    requests: list[Request] = []
    for index, (pool, class_name) in enumerate(pools + [("", name) for name in classes]):  # "": the nodeclass validation's dry runs
        spec = classes[class_name]
        launch_tags = {**spec.get("tags", {}), f"kubernetes.io/cluster/{cluster}": "owned", "karpenter.sh/nodepool": pool,
                       "eks:eks-cluster-name": cluster, "karpenter.k8s.aws/ec2nodeclass": class_name}
        what = f"nodepool {pool!r} / ec2nodeclass {class_name}" if pool else f"validation of ec2nodeclass {class_name}"
        existing = [f"{ec2}:launch-template/lt-{index:017x}",
                    f"arn:aws:ec2:{REGION}::image/ami-0123456789abcdef0", f"arn:aws:ec2:{REGION}::snapshot/snap-0123456789abcdef0",
                    f"{ec2}:subnet/subnet-0123456789abcdef0", f"{ec2}:security-group/sg-0123456789abcdef0"]
        existing_tags = {existing[0]: launch_tags, existing[3]: discovered, existing[4]: discovered}
        for term in spec.get("capacityReservationSelectorTerms", []):
            existing.append(f"{ec2}:capacity-reservation/{term['id']}")
        if "placementGroupSelector" in spec:
            existing.append(f"{ec2}:placement-group/{spec['placementGroupSelector']['name']}")
        requests += [
            Request("ec2:CreateLaunchTemplate", f"{ec2}:launch-template/*", request_tags(launch_tags),
                    f"{what}: CreateLaunchTemplate with its launch tags"),
            Request("ec2:CreateTags", f"{ec2}:launch-template/*",
                    {**request_tags(launch_tags), "ec2:CreateAction": "CreateLaunchTemplate"},
                    f"{what}: tagging the launch template it creates"),
        ]
        for action, created in (("ec2:CreateFleet", ("fleet", "instance", "volume", "network-interface", "spot-instances-request")),
                                ("ec2:RunInstances", ("instance", "volume", "network-interface"))):
            for kind in created:  # the launch template's tag specifications tag the ENI and the spot request
                requests += [Request(action, f"{ec2}:{kind}/*", request_tags(launch_tags), f"{what}: {action} creates a {kind}"),
                             Request("ec2:CreateTags", f"{ec2}:{kind}/*",
                                     {**request_tags(launch_tags), "ec2:CreateAction": action.split(":")[1]},
                                     f"{what}: {action} tags the {kind} it creates")]
            for arn in existing:  # no request tag reaches an existing resource
                requests.append(Request(action, arn, resource_tags(existing_tags.get(arn, {})),
                                        f"{what}: {action} uses the existing {arn.split(':')[-1].split('/')[0]}"))
        instance = f"{ec2}:instance/i-{index:017x}"
        running = {**launch_tags, "Name": "ip-10-0-1-23.ec2.internal"}
        tagging = {"Name": "ip-10-0-1-23.ec2.internal", "karpenter.sh/nodeclaim": f"{pool or class_name}-x7k2p"}
        requests += [
            Request("ec2:CreateTags", instance, {**resource_tags(launch_tags), **request_tags(tagging)},
                    f"{what}: the nodeclaim tagging controller names the instance"),
            Request("ec2:TerminateInstances", instance, resource_tags(running), f"{what}: deleting a nodeclaim"),
            Request("ec2:DeleteLaunchTemplate", existing[0], resource_tags(launch_tags), f"{what}: launch template GC"),
        ]
        profile = f"arn:aws:iam::{account}:instance-profile/{cluster}_{index:019d}"
        profile_tags = {**spec.get("tags", {}), f"kubernetes.io/cluster/{cluster}": "owned", "eks:eks-cluster-name": cluster,
                        "karpenter.k8s.aws/ec2nodeclass": class_name, "topology.kubernetes.io/region": REGION}
        requests += [
            Request("iam:GetInstanceProfile", profile, {}, f"{what}: instance profile lookup"),
            Request("iam:CreateInstanceProfile", profile, request_tags(profile_tags), f"{what}: instance profile for spec.role"),
            Request("iam:AddRoleToInstanceProfile", profile, resource_tags(profile_tags), f"{what}: attaching spec.role"),
            Request("iam:PassRole", facts["node_role_arn"], {"iam:PassedToService": "ec2.amazonaws.com"},
                    f"{what}: passing the node role to the profile and to EC2"),
            Request("iam:RemoveRoleFromInstanceProfile", profile, resource_tags(profile_tags), f"{what}: swapping the role"),
            Request("iam:DeleteInstanceProfile", profile, resource_tags(profile_tags), f"{what}: nodeclass deletion"),
        ]
    regional = {"aws:RequestedRegion": REGION}
    requests += [Request(f"ec2:{action}", "*", regional, f"discovery: ec2:{action}") for action in (
        "DescribeCapacityReservations", "DescribeImages", "DescribeInstances", "DescribeInstanceStatus",
        "DescribeInstanceTypeOfferings", "DescribeInstanceTypes", "DescribeLaunchTemplates", "DescribePlacementGroups",
        "DescribeSecurityGroups", "DescribeSpotPriceHistory", "DescribeSubnets")]
    requests += [
        Request("ssm:GetParameter", f"arn:aws:ssm:{REGION}::parameter/aws/service/eks/optimized-ami/1.35/amazon-linux-2023/"
                "x86_64/nvidia/amazon-linux-2023-x86_64-nvidia-1.35-v20261110/image_id", {}, "resolving the AMI alias"),
        Request("pricing:GetProducts", "*", {"aws:RequestedRegion": "us-east-1"}, "on-demand prices (the pricing API's region)"),
        Request("iam:ListInstanceProfiles", "*", {}, "instance profile garbage collection"),
        Request("eks:DescribeCluster", cluster_arn, {}, "cluster CIDR and endpoint discovery"),
        Request("arc-zonal-shift:GetManagedResource", cluster_arn, {"arc-zonal-shift:ResourceIdentifier": cluster_arn},
                "zonal shift status of the cluster"),
        *[Request(f"sqs:{action}", facts["queue_arn"], {"aws:SecureTransport": "true"}, f"interruption queue: sqs:{action}")
          for action in ("GetQueueUrl", "ReceiveMessage", "DeleteMessage")],
    ]
    return requests


def denied(document: dict, requests: list[Request]) -> list[str]:
    return [f"{r.action} on {r.resource} ({r.why}): {evaluate(document, r).effect}"
            for r in requests if evaluate(document, r).effect != ALLOW]


def test_controller_policy_allows_every_request_karpenter_makes(run):
    requests = karpenter_requests(run)
    problems = denied(deployed_policy(run), requests)
    assert not problems, f"{len(problems)} of {len(requests)} Karpenter requests denied:\n" + "\n".join(problems)


def test_upstream_policy_allows_the_same_requests(run):
    """The table's own check: a request upstream's policy denies is a request the table got wrong."""
    assert not denied(upstream_policy(**_stack_facts(run)), karpenter_requests(run))


def test_request_table_refuses_the_policy_before_issue_15():
    """The original statement for launch templates asked for a request tag; a fleet that uses an
    existing template sends none for it, which is the failure the table exists to catch."""
    facts = {"cluster": "tensile-prod"}
    launch_template = f"arn:aws:ec2:{REGION}:{MOCK_ACCOUNT_ID}:launch-template/lt-0123"
    old = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
        "Resource": f"arn:aws:ec2:{REGION}:*:launch-template/*",
        "Condition": {"StringEquals": {f"aws:RequestTag/kubernetes.io/cluster/{facts['cluster']}": "owned"}}}]}
    tags = {f"kubernetes.io/cluster/{facts['cluster']}": "owned", "karpenter.sh/nodepool": "l40s"}
    request = Request("ec2:CreateFleet", launch_template, resource_tags(tags))
    assert evaluate(old, request).effect != ALLOW


def narrowings(ours: dict, upstream: dict) -> set[tuple[str, str, str]]:
    """Every place `ours` allows less than `upstream`, statement by statement (by Sid)."""
    found: set[tuple[str, str, str]] = set()
    by_sid = {s.get("Sid"): s for s in ours["Statement"]}
    as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    for theirs in upstream["Statement"]:
        sid = theirs["Sid"]
        mine = by_sid.get(sid)
        if mine is None:
            found.add((sid, "statement", "missing"))
            continue
        if mine["Effect"] != theirs["Effect"]:
            found.add((sid, "effect", mine["Effect"]))
        for action in as_list(theirs["Action"]):
            if not any(pattern_covers(a.lower(), action.lower()) for a in as_list(mine.get("Action", []))):
                found.add((sid, "action", action))
        for resource in as_list(theirs["Resource"]):
            if not any(pattern_covers(r, resource) for r in as_list(mine.get("Resource", []))):
                found.add((sid, "resource", resource))
        their_conditions = {(op, key.lower()): as_list(v) for op, keyed in theirs.get("Condition", {}).items()
                            for key, v in keyed.items()}
        for op, keyed in mine.get("Condition", {}).items():
            for key, values in keyed.items():
                if (op, key.lower()) not in their_conditions:
                    found.add((sid, f"condition {op} {key}", "added"))
                    continue
                for value in their_conditions[(op, key.lower())]:
                    if value not in as_list(values) and not (op.startswith("StringLike") and
                                                              any(pattern_covers(v, value) for v in as_list(values))):
                        found.add((sid, f"condition {op} {key}", value))
    return found


def test_controller_policy_is_narrower_than_upstream_only_where_explained(run):
    facts = _stack_facts(run)
    found = narrowings(deployed_policy(run), upstream_policy(**facts))
    unexplained = sorted(found - NARROWER_THAN_UPSTREAM.keys())
    stale = sorted(NARROWER_THAN_UPSTREAM.keys() - found)
    assert not unexplained, "narrower than upstream Karpenter 1.14.1, with no reason given:\n" + "\n".join(map(str, unexplained))
    assert not stale, f"reasons for narrowings that are gone: {stale}"


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["Statement"].pop(), ("AllowInstanceProfileReadActions", "statement", "missing")),
    (lambda d: d["Statement"][0]["Action"].remove("ec2:CreateFleet"), ("AllowScopedEC2InstanceAccessActions", "action", "ec2:CreateFleet")),
    (lambda d: d["Statement"][0].update(Resource=d["Statement"][0]["Resource"][1:]),
     ("AllowScopedEC2InstanceAccessActions", "resource", f"arn:aws:ec2:{REGION}::image/*")),
    (lambda d: d["Statement"][0].update(Condition={"StringEquals": {"aws:RequestedRegion": REGION}}),
     ("AllowScopedEC2InstanceAccessActions", "condition StringEquals aws:RequestedRegion", "added")),
])
def test_narrowings_finds_each_kind(change, expected):
    facts = {"cluster": "c", "node_role_arn": "arn:aws:iam::1:role/n", "queue_arn": "arn:aws:sqs:us-east-1:1:q"}
    upstream = upstream_policy(**facts)
    assert narrowings(upstream, upstream_policy(**facts)) == set()
    change(upstream)
    assert expected in narrowings(upstream, upstream_policy(**facts))
