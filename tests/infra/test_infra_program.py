"""The mocked program, per stack: inventory, key properties, tags, component structure."""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from collections import Counter

import pytest

from infra import cost, mocks
from infra.components import interruption, tagging

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"

# Resource counts per type that follow from each stack file (2 vs 3 AZs, one NAT vs one per AZ,
# endpoints, 1 vs 3 GPU pools with 2 EFA families, 1 vs 2 teams).
EXPECTED_COUNTS = {
    "dev": {
        "aws:ec2/subnet:Subnet": 4, "aws:ec2/natGateway:NatGateway": 1, "aws:ec2/eip:Eip": 1,
        "aws:ec2/vpcEndpoint:VpcEndpoint": 1, "aws:ec2/routeTable:RouteTable": 3,
        NODE_POOL: 1, NODE_CLASS: 1, CRD: 14, "aws:ec2/placementGroup:PlacementGroup": 0,
        "kubernetes:helm.sh/v3:Release": 6, "aws:efs/mountTarget:MountTarget": 2, "aws:efs/accessPoint:AccessPoint": 1,
        "aws:cloudwatch/eventRule:EventRule": 5, "aws:cloudwatch/eventTarget:EventTarget": 5,
        "aws:eks/addon:Addon": 5, "aws:eks/nodeGroup:NodeGroup": 1, "aws:eks/accessEntry:AccessEntry": 2,
        "aws:budgets/budget:Budget": 1, "aws:sqs/queue:Queue": 2, "aws:efs/backupPolicy:BackupPolicy": 1,
        "aws:autoscaling/tag:Tag": 4,
    },
    "prod": {
        "aws:ec2/subnet:Subnet": 6, "aws:ec2/natGateway:NatGateway": 3, "aws:ec2/eip:Eip": 3,
        "aws:ec2/vpcEndpoint:VpcEndpoint": 5, "aws:ec2/routeTable:RouteTable": 4,
        NODE_POOL: 4, NODE_CLASS: 4, CRD: 15, "aws:ec2/placementGroup:PlacementGroup": 2,
        "kubernetes:helm.sh/v3:Release": 7, "aws:efs/mountTarget:MountTarget": 3, "aws:efs/accessPoint:AccessPoint": 2,
        "aws:cloudwatch/eventRule:EventRule": 5, "aws:cloudwatch/eventTarget:EventTarget": 5,
        "aws:eks/addon:Addon": 5, "aws:eks/nodeGroup:NodeGroup": 1, "aws:eks/accessEntry:AccessEntry": 4,
        "aws:budgets/budget:Budget": 1, "aws:sqs/queue:Queue": 2, "aws:efs/backupPolicy:BackupPolicy": 1,
        "aws:autoscaling/tag:Tag": 4,
    },
}
EXPECTED_TOTALS = {"dev": 148, "prod": 200}
COMPONENTS = {"tensile:infra:Network", "tensile:infra:Cluster", "tensile:infra:InterruptionQueue",
              "tensile:infra:Karpenter", "tensile:infra:GpuNodePools", "tensile:infra:Storage", "tensile:infra:Budgets",
              "tensile:infra:Addons", "tensile:infra:Teams", "tensile:infra:BudgetEnforcer"}


def _one(run, typ):
    found = run.of_type(typ)
    assert len(found) == 1, f"{run.stack}: expected one {typ}, got {len(found)}"
    return found[0]


def _requirement(node_pool, key):
    reqs = node_pool["inputs"]["spec"]["template"]["spec"]["requirements"]
    return next(r["values"] for r in reqs if r["key"] == key)


def _pools_config(raw):
    return {p["name"]: p for p in raw["tensile:gpuPools"]}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_program_inventory_matches_the_stack_file(stack, stack_runs):
    run = stack_runs[stack]
    counts = Counter(r["type"] for r in run.resources)
    wrong = {t: (counts.get(t, 0), n) for t, n in EXPECTED_COUNTS[stack].items() if counts.get(t, 0) != n}
    assert not wrong, f"{stack}: (got, expected) per type: {wrong}"
    assert len(run.resources) == EXPECTED_TOTALS[stack]
    assert {r["type"] for r in run.resources if r["type"].startswith("tensile:")} == COMPONENTS


def _requests_gpus(value) -> bool:
    if isinstance(value, dict):
        return any(k.endswith("nvidia.com/gpu") or _requests_gpus(v) for k, v in value.items())
    return isinstance(value, list) and any(_requests_gpus(v) for v in value)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_ship_no_training_job_and_no_gpu_capacity_that_starts_by_default(stack, stack_runs,
                                                                                     example_runs, raw_configs):
    shipped, example = stack_runs[stack], example_runs[stack]
    # No workload asks for GPUs (the teams' quotas and the admission policy name them, run nothing).
    workloads = [r for r in shipped.resources if r["type"].split(":")[1] in ("batch/v1", "apps/v1", "core/v1")
                 and r["type"].rsplit(":", 1)[-1] in ("Job", "CronJob", "Deployment", "StatefulSet", "DaemonSet",
                                                      "ReplicaSet", "Pod")]
    assert [r["name"] for r in workloads if _requests_gpus(r["inputs"].get("spec"))] == []
    # GPU pools hold no static capacity (Karpenter buys a node only for a pending pod), and the only
    # node group, always on, is the system group of CPU instances.
    pools = shipped.of_type(NODE_POOL)
    assert pools and all("replicas" not in p["inputs"]["spec"] for p in pools)
    groups = shipped.of_type("aws:eks/nodeGroup:NodeGroup")
    assert [t for g in groups for t in g["inputs"]["instanceTypes"] if t in cost.CATALOGUE] == []
    # The example entries, enabled, add their TrainingJobs (Job or CronJob, config, services) and,
    # for a scaled job, the scaler controller; they remove nothing.
    before = {r["urn"] for r in shipped.resources}
    added = [r for r in example.resources if r["urn"] not in before]
    scaled = any("scaler" in j for j in raw_configs[stack]["tensile:jobs"])
    assert {r["type"] for r in added if r["type"].startswith("tensile:")} == (
        {"tensile:infra:TrainingJob", "tensile:infra:ScalerController"} if scaled else {"tensile:infra:TrainingJob"})
    assert all("tensile:infra:TrainingJob" in r["urn"] or "tensile:infra:ScalerController" in r["urn"] for r in added)
    assert "kubernetes:batch/v1:Job" in {r["type"] for r in added}
    assert before <= {r["urn"] for r in example.resources}


def test_program_children_are_named_after_and_parented_by_their_component(run):
    components = {r["urn"]: r["name"] for r in run.resources if r["type"].startswith("tensile:infra:")}
    for r in run.resources:
        if r["type"].startswith("tensile:infra:"):
            assert r["parent"].endswith(f"pulumi:pulumi:Stack::tensile-{run.stack}")
            continue
        assert r["parent"] in components, f"{r['name']} is not inside a component"
        assert r["name"].startswith(components[r["parent"]] + "-"), r["name"]


def test_node_pools_try_reserved_then_spot_then_on_demand(run, raw_configs):
    pools = _pools_config(raw_configs[run.stack])
    for np in run.of_type(NODE_POOL):
        pool = pools[np["inputs"]["metadata"]["labels"]["tensile.io/gpu-pool"]]
        expected = (["reserved"] if pool.get("capacityReservationIds") else []) + ["spot", "on-demand"]
        assert _requirement(np, "karpenter.sh/capacity-type") == expected, np["name"]


def test_prod_h100_pool_is_backed_by_its_capacity_reservation(prod):
    np = next(n for n in prod.of_type(NODE_POOL) if n["inputs"]["metadata"]["name"] == "h100-us-east-1a")
    assert _requirement(np, "karpenter.sh/capacity-type")[0] == "reserved"
    cls = next(c for c in prod.of_type(NODE_CLASS) if c["inputs"]["metadata"]["name"] == "h100-us-east-1a")
    assert cls["inputs"]["spec"]["capacityReservationSelectorTerms"] == [{"id": "cr-0a1b2c3d4e5f60718"}]


def test_node_pools_hold_one_gpu_model_each(run):
    for np in run.of_type(NODE_POOL):
        models = _requirement(np, "karpenter.k8s.aws/instance-gpu-name")
        types = _requirement(np, "node.kubernetes.io/instance-type")
        assert len(models) == 1
        assert {cost.CATALOGUE[t].gpu_model for t in types} == set(models), np["name"]
        assert np["inputs"]["spec"]["template"]["metadata"]["labels"]["tensile.io/gpu-model"] == models[0]


def test_node_pools_spread_over_the_configured_zones(run, raw_configs):
    raw = raw_configs[run.stack]
    azs = raw["tensile:network"]["availabilityZones"]
    pools = _pools_config(raw)
    zones_by_pool: dict[str, set] = {}
    for np in run.of_type(NODE_POOL):
        name = np["inputs"]["metadata"]["labels"]["tensile.io/gpu-pool"]
        zones_by_pool.setdefault(name, set()).update(_requirement(np, "topology.kubernetes.io/zone"))
    for name, pool in pools.items():
        assert zones_by_pool[name] == set(pool.get("zones", azs)), name
    # Non-EFA pools span every AZ so a restarted job can move zone.
    for name, pool in pools.items():
        if not pool.get("efa") and "zones" not in pool:
            assert zones_by_pool[name] == set(azs)
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    assert sorted(s["inputs"]["availabilityZone"] for s in subnets) == sorted(azs * 2)


def test_node_pool_gpu_limits_add_up_to_the_configured_maximum(run, raw_configs):
    pools = _pools_config(raw_configs[run.stack])
    limits: Counter = Counter()
    for np in run.of_type(NODE_POOL):
        lim = np["inputs"]["spec"]["limits"]
        limits[np["inputs"]["metadata"]["labels"]["tensile.io/gpu-pool"]] += int(lim["nvidia.com/gpu"])
        assert int(lim["cpu"]) > 0 and lim["memory"].endswith("Gi")
    for name, pool in pools.items():
        assert 0 < limits[name] <= pool["maxGpus"], name
        if not pool.get("efa"):
            assert limits[name] == pool["maxGpus"]


def test_node_pools_taint_gpus_and_never_consolidate_running_training(run):
    for np in run.of_type(NODE_POOL):
        spec = np["inputs"]["spec"]
        assert spec["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
        assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
        zero = [b for b in spec["disruption"]["budgets"] if b["nodes"] == "0"]
        assert zero and set(zero[0]["reasons"]) == {"Drifted", "Underutilized"}
        assert spec["template"]["spec"]["expireAfter"] and spec["template"]["spec"]["terminationGracePeriod"]
    # (The CRDs' own descriptions mention the annotation; nothing we declare may use it.)
    assert "do-not-disrupt" not in json.dumps([r["inputs"] for r in run.resources if r["type"] != CRD])


def test_node_classes_require_imdsv2_and_encrypted_volumes_and_tag_instances(run, raw_configs):
    raw = raw_configs[run.stack]
    hop = raw["tensile:karpenter"]["imdsHopLimit"]
    for cls in run.of_type(NODE_CLASS):
        spec = cls["inputs"]["spec"]
        assert spec["metadataOptions"]["httpTokens"] == "required"
        assert spec["metadataOptions"]["httpPutResponseHopLimit"] == hop
        assert all(b["ebs"]["encrypted"] is True for b in spec["blockDeviceMappings"])
        assert int(spec["blockDeviceMappings"][0]["ebs"]["volumeSize"].rstrip("Gi")) >= 200
        assert spec["tags"][tagging.STACK_TAG] == run.stack
        assert spec["tags"][tagging.COST_CENTRE_TAG] == raw["tensile:costCentre"]
        assert spec["role"].startswith("cluster-karpenter-node-role")
        assert spec["amiSelectorTerms"] == [{"alias": raw["tensile:karpenter"]["amiAlias"]}]


def test_custom_resources_wait_for_the_pinned_crds(run):
    crd_urns = {r["urn"] for r in run.of_type(CRD) if r["inputs"]["spec"]["group"].startswith("karpenter")}
    names = {r["inputs"]["metadata"]["name"] for r in run.of_type(CRD)}
    assert {n for n in names if "karpenter" in n} == {
        "nodepools.karpenter.sh", "nodeclaims.karpenter.sh", "ec2nodeclasses.karpenter.k8s.aws"}
    for r in run.of_type(NODE_POOL) + run.of_type(NODE_CLASS):
        assert crd_urns <= set(r["dependencies"]), r["name"]
    assert all(r["retain_on_delete"] for r in run.of_type(CRD))
    release = next(r for r in run.of_type("kubernetes:helm.sh/v3:Release") if r["inputs"]["name"] == "karpenter")
    assert release["inputs"]["skipCrds"] is True
    assert release["inputs"]["version"] == "1.14.1"
    assert crd_urns <= set(release["dependencies"])
    settings = release["inputs"]["values"]["settings"]
    assert settings["interruptionQueue"] == f"tensile-{run.stack}-interruption"
    assert settings["featureGates"] == {"nodeRepair": True, "reservedCapacity": True}
    assert release["inputs"]["values"]["nodeSelector"] == {"tensile.io/node-role": "system"}


def test_efa_pools_get_placement_groups_security_group_and_device_plugin(prod, dev):
    groups = prod.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert {g["inputs"]["strategy"] for g in groups} == {"cluster"}
    efa_classes = [c for c in prod.of_type(NODE_CLASS) if "placementGroupSelector" in c["inputs"]["spec"]]
    # The reserved h100 pool selects the group its reservation was made in (Pulumi.prod.yaml); the stack creates the rest.
    assert {c["inputs"]["spec"]["placementGroupSelector"]["name"] for c in efa_classes} == \
        {g["inputs"]["name"] for g in groups} | {"tensile-prod-h100-us-east-1a"}
    for c in efa_classes:
        assert {"tags": {"tensile.io/efa": "tensile-prod"}} in c["inputs"]["spec"]["securityGroupSelectorTerms"]
    sg = next(s for s in prod.of_type("aws:ec2/securityGroup:SecurityGroup") if s["name"] == "gpu-efa-sg")
    assert sg["inputs"]["ingress"][0]["self"] is True and sg["inputs"]["egress"][0]["self"] is True
    plugin = next(r for r in prod.of_type("kubernetes:helm.sh/v3:Release") if r["inputs"]["chart"] == "aws-efa-k8s-device-plugin")
    efa_pools = [n for n in prod.of_type(NODE_POOL) if n["inputs"]["metadata"]["labels"]["tensile.io/gpu-pool"] in ("a100", "h100")]
    assert len(efa_pools) == 3
    for np in efa_pools:  # the device plugin's node selector matches exactly the EFA pools' nodes
        labels = np["inputs"]["spec"]["template"]["metadata"]["labels"]
        assert plugin["inputs"]["values"]["nodeSelector"].items() <= labels.items()
    l40s = next(n for n in prod.of_type(NODE_POOL) if n["inputs"]["metadata"]["name"] == "l40s")
    assert "tensile.io/efa" not in l40s["inputs"]["spec"]["template"]["metadata"]["labels"]
    assert not any(r["name"] == "gpu-efa-sg" for r in dev.resources)


def test_cluster_is_pinned_private_encrypted_and_logged(run, raw_configs):
    raw = raw_configs[run.stack]["tensile:cluster"]
    cluster = _one(run, "aws:eks/cluster:Cluster")["inputs"]
    assert cluster["version"] == raw["kubernetesVersion"]
    vpc = cluster["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["publicAccessCidrs"] == raw["endpointPublicAccessCidrs"]
    assert "0.0.0.0/0" not in vpc["publicAccessCidrs"]
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    assert cluster["encryptionConfig"]["provider"]["keyArn"].startswith("arn:aws:kms:")
    assert set(cluster["enabledClusterLogTypes"]) == set(raw["logTypes"])
    assert cluster["accessConfig"]["authenticationMode"] == "API"


def test_addons_are_pinned_and_the_vpc_cni_enforces_network_policy(run, raw_configs):
    versions = raw_configs[run.stack]["tensile:cluster"]["addonVersions"]
    addons = {a["inputs"]["addonName"]: a["inputs"] for a in run.of_type("aws:eks/addon:Addon")}
    assert {name: a["addonVersion"] for name, a in addons.items()} == versions
    assert json.loads(addons["vpc-cni"]["configurationValues"]) == {"enableNetworkPolicy": "true"}


def test_system_node_group_is_on_demand_and_keeps_its_desired_size(run):
    group = _one(run, "aws:eks/nodeGroup:NodeGroup")
    assert group["inputs"]["capacityType"] == "ON_DEMAND"
    assert group["ignore_changes"] == ["scalingConfig.desiredSize"]
    scaling = group["inputs"]["scalingConfig"]
    assert scaling["minSize"] <= scaling["desiredSize"] <= scaling["maxSize"]


def test_nat_gateways_and_endpoints_follow_the_environment(dev, prod):
    def private_routes(run):
        return [rt["inputs"]["routes"][0].get("natGatewayId") for rt in run.of_type("aws:ec2/routeTable:RouteTable")
                if "private" in rt["name"]]
    assert len(set(private_routes(dev))) == 1
    assert len(set(private_routes(prod))) == 3
    services = sorted(e["inputs"]["serviceName"] for e in prod.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"))
    assert services == sorted(f"com.amazonaws.us-east-1.{s}" for s in ("s3", "ecr.api", "ecr.dkr", "sts", "logs"))
    s3 = next(e for e in dev.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"))
    assert s3["inputs"]["vpcEndpointType"] == "Gateway" and len(s3["inputs"]["routeTableIds"]) == 2


def test_interruption_queue_receives_every_karpenter_event_and_is_encrypted(run):
    patterns = [json.loads(r["inputs"]["eventPattern"]) for r in run.of_type("aws:cloudwatch/eventRule:EventRule")]
    assert sorted(map(json.dumps, patterns)) == sorted(map(json.dumps, interruption.INTERRUPTION_EVENTS.values()))
    queue = next(q for q in run.of_type("aws:sqs/queue:Queue") if q["name"] == "interruption-queue")["inputs"]
    assert queue["sqsManagedSseEnabled"] is True and queue["messageRetentionSeconds"] == 300
    assert json.loads(queue["redrivePolicy"])["deadLetterTargetArn"].endswith("interruption-dlq")
    assert all(t["inputs"]["arn"].endswith("interruption-queue") for t in run.of_type("aws:cloudwatch/eventTarget:EventTarget"))
    policy = json.loads(_one(run, "aws:sqs/queuePolicy:QueuePolicy")["inputs"]["policy"])
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert "events.amazonaws.com" in allow["Principal"]["Service"] and allow["Action"] == "sqs:SendMessage"


def test_checkpoint_bucket_is_versioned_encrypted_private_and_tls_only(run, raw_configs):
    storage = raw_configs[run.stack]["tensile:storage"]
    assert _one(run, "aws:s3/bucketVersioning:BucketVersioning")["inputs"]["versioningConfiguration"]["status"] == "Enabled"
    sse = _one(run, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    default = sse["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "aws:kms" and default["kmsMasterKeyId"].startswith("arn:aws:kms:")
    block = _one(run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")["inputs"]
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    policy = json.loads(_one(run, "aws:s3/bucketPolicy:BucketPolicy")["inputs"]["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = {r["id"]: r for r in _one(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["inputs"]["rules"]}
    assert rules["expire-noncurrent"]["noncurrentVersionExpiration"]["noncurrentDays"] == storage["noncurrentVersionDays"]
    assert rules["abort-multipart"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == storage["abortMultipartDays"]


def test_efs_is_encrypted_in_every_az_and_reachable_only_from_the_cluster(run, raw_configs):
    raw = raw_configs[run.stack]
    assert _one(run, "aws:efs/fileSystem:FileSystem")["inputs"]["encrypted"] is True
    assert len(run.of_type("aws:efs/mountTarget:MountTarget")) == len(raw["tensile:network"]["availabilityZones"])
    sg = next(s for s in run.of_type("aws:ec2/securityGroup:SecurityGroup") if s["name"] == "storage-efs-sg")["inputs"]
    assert [(i["fromPort"], i["securityGroups"]) for i in sg["ingress"]] == [(2049, ["sg-cluster-eks-cluster"])]
    assert "cidrBlocks" not in sg["ingress"][0]
    points = {p["inputs"]["rootDirectory"]["path"] for p in run.of_type("aws:efs/accessPoint:AccessPoint")}
    assert points == {f"/teams/{t['name']}" for t in raw["tensile:teams"]}


def test_budget_notifies_at_each_configured_threshold(run, raw_configs):
    raw = raw_configs[run.stack]["tensile:budget"]
    budget = _one(run, "aws:budgets/budget:Budget")["inputs"]
    assert float(budget["limitAmount"]) == raw["monthlyUsd"] and budget["timeUnit"] == "MONTHLY"
    got = sorted((n["notificationType"], n["threshold"]) for n in budget["notifications"])
    expected = sorted([("ACTUAL", float(t)) for t in raw["actualThresholds"]]
                      + [("FORECASTED", float(t)) for t in raw["forecastThresholds"]])
    assert got == expected
    for n in budget["notifications"]:
        assert n["subscriberSnsTopicArns"] and n["subscriberEmailAddresses"] == raw["emails"]


def test_team_budgets_reach_the_enforcer_configmap(run, raw_configs):
    cm = next(c for c in run.of_type("kubernetes:core/v1:ConfigMap")
              if c["inputs"]["metadata"]["name"] == "team-budgets")["inputs"]
    doc = json.loads(cm["data"]["budgets.json"])
    assert {n: t["monthlyBudgetUsd"] for n, t in doc["teams"].items()} == {
        t["name"]: t["monthlyBudgetUsd"] for t in raw_configs[run.stack]["tensile:teams"]}
    assert set(doc["gpuHourPrices"]) == {p["gpuModel"] for p in raw_configs[run.stack]["tensile:gpuPools"]}


def _taggable(typ: str) -> bool:
    """A resource is taggable when its pulumi_aws class takes a `tags` argument."""
    module, cls_name = typ.split(":")[1].split("/")[0], typ.split(":")[2]
    with warnings.catch_warnings():  # importing a pulumi_aws module warns about its deprecated aliases
        warnings.simplefilter("ignore", DeprecationWarning)
        cls = getattr(importlib.import_module(f"pulumi_aws.{module}"), cls_name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def test_every_taggable_aws_resource_carries_the_stack_tags(run, raw_configs):
    raw = raw_configs[run.stack]
    expected = tagging.stack_tags(stack=run.stack, environment=raw["tensile:environment"],
                                  cost_centre=raw["tensile:costCentre"])
    aws_types = {r["type"] for r in run.resources if r["type"].startswith("aws:")}
    taggable = {t for t in aws_types if _taggable(t)}
    assert len(taggable) >= 20  # the check means something only if most types are taggable
    for r in run.resources:
        if r["type"] in taggable:
            tags = r["inputs"].get("tags") or {}
            assert expected.items() <= tags.items(), f"{r['name']} ({r['type']}) lacks stack tags: {tags}"


def test_team_resources_carry_the_team_tag(run):
    for point in run.of_type("aws:efs/accessPoint:AccessPoint"):
        assert point["inputs"]["tags"][tagging.TEAM_TAG] in point["inputs"]["rootDirectory"]["path"]


def test_iam_policies_never_allow_every_action_on_every_resource(run):
    docs = [json.loads(r["inputs"]["policy"]) for r in run.resources
            if r["type"] in ("aws:iam/rolePolicy:RolePolicy", "aws:sqs/queuePolicy:QueuePolicy")]
    assert docs
    for doc in docs:
        for s in doc["Statement"]:
            if s["Effect"] == "Allow":
                assert not (s["Action"] in ("*", ["*"]) and s["Resource"] in ("*", ["*"])), s


def test_stack_exports_the_cost_range(run):
    c = run.outputs["costUsd"]
    assert 0 < c["monthlyAtMin"] < c["monthlyAtMaxAllSpot"] < c["monthlyAtMaxAllOnDemand"] <= c["monthlyBudget"]
    assert sorted(run.outputs["nodePools"]) == sorted(n["inputs"]["metadata"]["name"] for n in run.of_type(NODE_POOL))


def test_every_component_registers_resolved_outputs(run, raw_configs):
    components = {r["urn"]: r for r in run.resources if r["type"].startswith("tensile:infra:")}
    assert set(run.component_outputs) >= set(components)
    for urn in components:
        outputs = run.component_outputs[urn]
        assert outputs and all(v not in (None, "", []) for v in outputs.values()), (urn, outputs)
    network = next(u for u, r in components.items() if r["type"] == "tensile:infra:Network")
    azs = raw_configs[run.stack]["tensile:network"]["availabilityZones"]
    assert len(run.component_outputs[network]["privateSubnetIds"]) == len(azs)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_program_runs_from_its_own_directory_as_the_language_host_runs_it(stack, stack_runs):
    """`main: infra/`: the language host runs the directory with runpy, so only infra/ is on
    sys.path; the program itself must make `infra.*` importable (every mocked run is laid out so)."""
    from pathlib import Path

    infra_dir = str(Path(__file__).resolve().parents[2] / "infra")
    run = stack_runs[stack]
    assert run.layout == {"sys_path0": infra_dir, "cwd": infra_dir, "infra_imported_before_program": False}
    assert len(run.resources) == EXPECTED_TOTALS[run.stack]


def test_resources_record_which_resources_feed_each_input(run):
    """The policy pack joins resources through property dependencies (URNs), never IDs."""
    versioning = _one(run, "aws:s3/bucketVersioning:BucketVersioning")
    bucket = _one(run, "aws:s3/bucket:Bucket")
    assert versioning["property_dependencies"]["bucket"] == [bucket["urn"]]


PROTECTED_TYPES = ("aws:kms/key:Key", "aws:s3/bucket:Bucket", "aws:efs/fileSystem:FileSystem", "aws:eks/cluster:Cluster")


def test_what_holds_data_or_keys_is_protected_and_nothing_else(run):
    """Issue 17 item 7: `pulumi destroy`, or a change that would replace them, stops at the
    bucket, the file system, every KMS key and the cluster (docs/upgrades.md says how to lift it)."""
    protected = {r["name"] for r in run.resources if r["protect"]}
    expected = {r["name"] for r in run.resources if r["type"] in PROTECTED_TYPES}
    assert protected == expected
    assert {"storage-checkpoints", "storage-efs", "storage-key", "cluster-eks", "cluster-secrets-key",
            "budgets-alerts-key"} == expected


def test_efs_is_backed_up_by_aws_backup(run):
    (policy,) = run.of_type("aws:efs/backupPolicy:BackupPolicy")
    assert policy["inputs"]["backupPolicy"] == {"status": "ENABLED"}
    assert policy["inputs"]["fileSystemId"] == "storage-efs-id"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_exports_how_to_reach_the_cluster_and_its_identities(stack, stack_runs, raw_configs):
    outputs = stack_runs[stack].outputs
    kubeconfig = json.loads(outputs["kubeconfig"])
    (cluster_entry,) = kubeconfig["clusters"]
    assert cluster_entry["cluster"] == {"server": outputs["clusterEndpoint"],
                                        "certificate-authority-data": outputs["clusterCertificateAuthority"]}
    assert outputs["clusterEndpoint"].startswith("https://") and outputs["clusterCertificateAuthority"]
    teams = [t["name"] for t in raw_configs[stack]["tensile:teams"]]
    assert sorted(outputs["trainerRoleArns"]) == sorted(teams)
    assert all(arn == f"arn:aws:iam::{mocks.MOCK_ACCOUNT_ID}:role/teams-{team}-trainer-role"
               for team, arn in outputs["trainerRoleArns"].items())
    assert outputs["karpenterControllerRoleArn"].endswith(":role/karpenter-controller-role")
    assert outputs["karpenterNodeRoleArn"].endswith(":role/cluster-karpenter-node-role")
    assert outputs["enforcerServiceAccount"] == "tensile-system/tensile-enforcer"


def test_node_classes_wait_for_the_placement_group_and_efa_security_group_they_select(run):
    """Issue 17 item 8: a class names its placement group and finds the EFA group by tag, so only
    an explicit dependency orders them (create before the class, delete after it)."""
    urns = {r["name"]: r["urn"] for r in run.resources}
    groups = {g["inputs"]["name"]: g["urn"] for g in run.of_type("aws:ec2/placementGroup:PlacementGroup")}
    checked = 0
    for node_class in run.of_type(NODE_CLASS):
        spec = node_class["inputs"]["spec"]
        if spec.get("placementGroupSelector", {}).get("name") in groups:  # not a group the config names
            assert groups[spec["placementGroupSelector"]["name"]] in node_class["dependencies"]
            checked += 1
        if any("tensile.io/efa" in term.get("tags", {}) for term in spec["securityGroupSelectorTerms"]):
            assert urns["gpu-efa-sg"] in node_class["dependencies"]
            checked += 1
    assert checked == (0 if run.stack == "dev" else 5)  # prod: 2 stack-made groups, 3 EFA classes


def test_cluster_waits_for_its_role_policy_attachment(run):
    cluster = run.named("cluster-eks")
    assert run.named("cluster-role-cluster-policy")["urn"] in cluster["dependencies"]


def test_system_node_instances_carry_the_stack_tags_the_budget_filters_on(run):
    """Issue 17 item 8: tags on a managed node group reach neither its ASG nor its instances; the
    ASG is tagged, propagated at launch, with every stack tag, the budget's filter among them."""
    group = run.named("cluster-system")
    tags = {t["inputs"]["tag"]["key"]: t for t in run.of_type("aws:autoscaling/tag:Tag")}
    stack_tags = {k: v for k, v in run.named("cluster-role")["inputs"]["tags"].items()}
    assert {k: t["inputs"]["tag"]["value"] for k, t in tags.items()} == stack_tags
    for tag in tags.values():
        assert tag["inputs"]["tag"]["propagateAtLaunch"] is True
        assert tag["inputs"]["autoscalingGroupName"] == "eks-cluster-system-mock"
        assert group["urn"] in tag["dependencies"]
    (budget,) = run.of_type("aws:budgets/budget:Budget")
    (tag_filter,) = [f for f in budget["inputs"]["costFilters"] if f["name"] == "TagKeyValue"]
    assert tag_filter["values"] == [f"user:{tagging.STACK_TAG}${tags[tagging.STACK_TAG]['inputs']['tag']['value']}"]
