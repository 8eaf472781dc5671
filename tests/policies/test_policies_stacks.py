"""The whole pack as the CLI runs it, over gRPC, on every resource of each stack's mocked program:
dev and prod pass every mandatory rule; broken stacks each trip the rule meant for them."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from infra import mocks
from policies import runner

from .conftest import REPO_ROOT, STACKS


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("shipped", [True, False], ids=["as-shipped", "example-jobs-enabled"])
def test_pack_passes_every_mandatory_rule_on_each_stack(analyzer, stack_runs, example_runs, stack, shipped):
    result = analyzer.run((stack_runs if shipped else example_runs)[stack].resources, runner.stack_config(stack))
    assert result.mandatory == []
    assert result.advisory == []


U = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def failing(result: runner.PackResult) -> set[str]:
    return {d.policy for d in result.mandatory}


def stack_file_config(stack: str) -> dict:
    return yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]


def _set(section, key, value):
    def change(config):
        config[section][key] = value
    return change


# Stack files the program's validation lets through but a rule must refuse: name -> (stack, change
# to its config, pack config, the one rule it must trip). A dev budget below the worst case (dev only
# warns) is the end-to-end `tensile preview` test (test_policies_preview.py): one program run fewer.
BROKEN_CONFIGS = {
    "dev-imds-hop-limit-3": ("dev", _set("tensile:karpenter", "imdsHopLimit", 3), {}, "ec2nodeclass-imdsv2"),
    "dev-no-forecast-notification": ("dev", _set("tensile:budget", "forecastThresholds", []), {},
                                     "stack-budget-with-notifications"),
    "dev-api-open-where-the-pack-forbids-it": (
        "dev", _set("tensile:cluster", "endpointPublicAccessCidrs", ["0.0.0.0/0"]),
        {"eks-api-not-open": {"environments": ["dev", "prod"]}}, "eks-api-not-open"),
}


@pytest.fixture(scope="session")
def broken_runs() -> dict[str, mocks.ProgramRun]:
    def run(name):
        stack, change, _, _ = BROKEN_CONFIGS[name]
        config = copy.deepcopy(stack_file_config(stack))
        change(config)
        return mocks.run_isolated(stack, config=config)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(BROKEN_CONFIGS, pool.map(run, BROKEN_CONFIGS)))


@pytest.mark.parametrize("name", BROKEN_CONFIGS)
def test_pack_refuses_each_broken_stack_config_with_its_rule(analyzer, broken_runs, name):
    stack, _, pack_config, rule = BROKEN_CONFIGS[name]
    run = broken_runs[name]
    assert run.error is None, run.error
    result = analyzer.run(run.resources, {**runner.stack_config(stack), **pack_config})
    assert failing(result) == {rule}, [d.message for d in result.mandatory]


def _edit(type_, name, change):
    def apply(resources):
        out = copy.deepcopy(resources)
        matches = [r for r in out if r["type"] == type_ and (name is None or r["name"] == name)]
        assert matches, f"no {type_} {name}"
        for r in matches:
            change(r)
        return [r for r in out if not r.get("drop")]
    return apply


def _drop(r):
    r["drop"] = True


def _spot_only(r):
    r["inputs"]["spec"]["template"]["spec"]["requirements"][0]["values"] = ["reserved", "spot"]


def _one_zone(resources):
    out = copy.deepcopy(resources)
    targets = [r for r in out if r["type"] == "aws:efs/mountTarget:MountTarget"]
    for r in targets[1:]:
        r["property_dependencies"]["subnetId"] = targets[0]["property_dependencies"]["subnetId"]
    return out


# Resource-level breaks of the prod program's records, for rules no stack setting can reach.
BROKEN_RESOURCES = {
    "no-bucket-versioning": (_edit("aws:s3/bucketVersioning:BucketVersioning", None, _drop), "s3-bucket-versioned"),
    "sse-s3-not-kms": (_edit(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", None,
        lambda r: r["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"].update(sseAlgorithm="AES256")),
        "s3-bucket-kms-encrypted"),
    "no-public-access-block": (_edit("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", None, _drop),
                               "s3-bucket-public-access-blocked"),
    "no-tls-policy": (_edit("aws:s3/bucketPolicy:BucketPolicy", None, _drop), "s3-bucket-tls-only"),
    "efs-one-zone": (_one_zone, "efs-multi-az-mount-targets"),
    "efs-unencrypted": (_edit("aws:efs/fileSystem:FileSystem", None, lambda r: r["inputs"].update(encrypted=False)),
                        "efs-encrypted"),
    "system-nodes-on-spot": (_edit("aws:eks/nodeGroup:NodeGroup", None,
                                   lambda r: r["inputs"].update(capacityType="SPOT")), "system-nodegroup-on-demand"),
    "karpenter-anywhere": (_edit("kubernetes:helm.sh/v3:Release", "karpenter-release",
                                 lambda r: r["inputs"]["values"].pop("nodeSelector")), "system-pods-off-spot"),
    "pool-without-on-demand": (_edit("kubernetes:karpenter.sh/v1:NodePool", "gpu-l40s", _spot_only),
                               "gpu-nodepool-on-demand-fallback"),
    "cni-without-network-policy": (_edit("aws:eks/addon:Addon", "cluster-addon-vpc-cni",
                                         lambda r: r["inputs"].update(configurationValues="{}")),
                                   "vpc-cni-network-policy"),
    "untagged-subnet": (_edit("aws:ec2/subnet:Subnet", "network-public-us-east-1a",
                              lambda r: r["inputs"].pop("tags")), "aws-stack-tags"),
    "access-point-of-another-team": (_edit("aws:efs/accessPoint:AccessPoint", "storage-efs-vision",
                                           lambda r: r["inputs"]["tags"].update({"tensile.io/team": "llm"})),
                                     "team-resources-tagged"),
    "no-team-budget": (_edit("kubernetes:core/v1:ConfigMap", "budgets-team-budgets", lambda r: r["inputs"][
        "data"].update({"budgets.json": '{"teams": {"llm": {"monthlyBudgetUsd": 1000}}}'})), "team-has-budget"),
    "no-secrets-encryption": (_edit("aws:eks/cluster:Cluster", None, lambda r: r["inputs"].pop("encryptionConfig")),
                              "eks-secrets-encrypted"),
}


def _run_broken_prod(analyzer, stack_runs, change) -> runner.PackResult:
    before = {r["urn"]: r for r in stack_runs["prod"].resources}
    broken = change(stack_runs["prod"].resources)
    # Every resource policy already passed on the unchanged resources (test above): re-analyze only
    # the changed (or added) ones, and the whole stack.
    changed = [r["urn"] for r in broken if before.get(r["urn"]) != r]
    return analyzer.run(broken, runner.stack_config("prod"), analyze_only=changed)


@pytest.mark.parametrize("name", BROKEN_RESOURCES)
def test_pack_refuses_each_broken_prod_resource_with_its_rule(analyzer, stack_runs, name):
    change, rule = BROKEN_RESOURCES[name]
    result = _run_broken_prod(analyzer, stack_runs, change)
    assert failing(result) == {rule}, [d.message for d in result.mandatory]


def _research_namespace(with_quota_and_deny: bool):
    """Adds to prod a namespace `research` made like vision's but without its `tensile.io/team` label
    (and, when asked, with vision's quota and default-deny): a team namespace the stack forgot to label."""
    def add(resources):
        out = copy.deepcopy(resources)
        found = {}
        for r in resources:
            if not r["name"].startswith("teams-vision-"):
                continue
            # The namespace has several NetworkPolicies (DNS, HTTPS egress, …) registered in no fixed
            # order: copy the default-deny one by name, not whichever comes first.
            if r["type"] in ("kubernetes:core/v1:Namespace", "kubernetes:core/v1:ResourceQuota") or (
                    r["type"] == "kubernetes:networking.k8s.io/v1:NetworkPolicy" and r["name"].endswith("-default-deny")):
                found.setdefault(r["type"], r)
        namespace = found["kubernetes:core/v1:Namespace"]
        copies = [namespace] + ([found["kubernetes:core/v1:ResourceQuota"],
                                 found["kubernetes:networking.k8s.io/v1:NetworkPolicy"]] if with_quota_and_deny else [])
        for r in copy.deepcopy(copies):
            r["urn"] = r["urn"].replace("teams-vision-", "research-")
            r["name"] = r["name"].replace("teams-vision-", "research-")
            metadata = r["inputs"]["metadata"]
            if r["type"] == "kubernetes:core/v1:Namespace":
                metadata["name"] = "research"
                metadata["labels"].pop("tensile.io/team")
            else:
                metadata["namespace"] = "research"
            r["dependencies"] = [d for d in r["dependencies"] if "teams-vision-" not in d]
            r["property_dependencies"] = {k: [d for d in v if "teams-vision-" not in d]
                                          for k, v in r["property_dependencies"].items()}
            out.append(r)
        return out
    return add


def _unlabelled_node_group_on_spot(r):
    r["inputs"].pop("labels")
    r["inputs"].update(capacityType="SPOT")


# What a stack that forgot a label gets: the rules find their targets fail-closed (the pack before
# issue 15 item 8 reported nothing on each).
FORGOTTEN_LABELS = {
    "node-group-without-its-role-label-on-spot": (
        _edit("aws:eks/nodeGroup:NodeGroup", None, _unlabelled_node_group_on_spot), {"system-nodegroup-on-demand"}),
    "namespace-without-a-team-label": (_research_namespace(False), {
        "team-namespace-resource-quota", "team-namespace-default-deny", "team-has-budget", "team-has-queue-quota"}),
    "unlabelled-namespace-with-quota-and-deny-but-no-budget": (
        _research_namespace(True), {"team-has-budget", "team-has-queue-quota"}),
    "cluster-without-its-environment-tag-open-to-the-internet": (_edit(
        "aws:eks/cluster:Cluster", None, lambda r: (r["inputs"]["tags"].pop("tensile.io/environment"), r["inputs"][
            "vpcConfig"].update(publicAccessCidrs=["0.0.0.0/0"]))), {"eks-api-not-open", "aws-stack-tags"}),
}


@pytest.mark.parametrize("name", FORGOTTEN_LABELS)
def test_pack_refuses_each_forgotten_label_on_prod(analyzer, stack_runs, name):
    change, rules = FORGOTTEN_LABELS[name]
    result = _run_broken_prod(analyzer, stack_runs, change)
    assert failing(result) == rules, [d.message for d in result.mandatory]


def preview_view(resources: list[dict]) -> list[dict]:
    """What a real preview sends: every value computed from another resource's outputs (its ID, ARN
    or name, alone or inside a JSON document) is unknown, since mocks know them and a preview does not;
    URNs and property dependencies stay known."""
    names = {r["urn"]: r["name"] for r in resources}

    def hide(value, sources):
        if isinstance(value, str):
            return U if any(source in value for source in sources) else value
        if isinstance(value, dict):
            return {k: hide(v, sources) for k, v in value.items()}
        if isinstance(value, list):
            return [hide(v, sources) for v in value]
        return value

    out = copy.deepcopy(resources)
    for r in out:
        for prop, urns in r["property_dependencies"].items():
            if urns and prop in r["inputs"]:
                r["inputs"][prop] = hide(r["inputs"][prop], [names[u] for u in urns if u in names])
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_pack_at_preview_joins_by_urn_and_turns_unknowns_advisory(analyzer, stack_runs, stack):
    result = analyzer.run(preview_view(stack_runs[stack].resources), runner.stack_config(stack))
    assert result.mandatory == []
    # The bucket's TLS policy and Karpenter's controller policy are JSON computed from ARNs: unknown
    # at preview, so advisory. Side resources point at the bucket and mount targets at subnets through
    # unknown IDs, yet those rules still decide: the joins go by URN.
    assert {d.policy for d in result.advisory} == {"s3-bucket-tls-only", "iam-no-wildcard-admin"}
