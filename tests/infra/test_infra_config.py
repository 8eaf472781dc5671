"""Stack config validation: both stack files parse; each bad config is refused with its path and fix."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from infra import mocks
from infra.config import stack as stack_config
from infra.config.types import ConfigError

TODAY = dt.date(2026, 11, 28)


def _parse(raw, stack="dev", today=TODAY):
    return stack_config.parse(raw, stack=stack, today=today)


def _problems(raw, stack="dev", today=TODAY) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(raw, stack, today)
    return [str(p) for p in info.value.problems]


def test_config_parses_both_stack_files(raw_configs):
    dev = _parse(raw_configs["dev"], "dev")
    prod = _parse(raw_configs["prod"], "prod")
    assert (len(dev.network.availability_zones), dev.network.nat_gateways) == (2, "single")
    assert (len(prod.network.availability_zones), prod.network.nat_gateways) == (3, "per-az")
    assert [p.gpu_model for p in dev.gpu_pools] == ["l4"]
    assert [p.gpu_model for p in prod.gpu_pools] == ["l40s", "a100", "h100"]
    assert dev.budget.monthly_usd < prod.budget.monthly_usd
    assert prod.prices.on_demand["p5.48xlarge"].as_of == "2026-11-02"
    assert prod.cluster_name == "tensile-prod" and prod.is_production


def _set(path: str, value):
    """A mutation of the dev stack's raw config: `path` like `tensile:gpuPools[0].maxGpus`."""
    def mutate(raw):
        target, parts = raw, path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


_DELETE = object()

BAD_CONFIGS = [
    ("pool max GPUs zero", _set("tensile:gpuPools.0.maxGpus", 0), "gpuPools[0].maxGpus: must be > 0 (got 0)"),
    ("pool max GPUs not a number", _set("tensile:gpuPools.0.maxGpus", "eight"),
     "gpuPools[0].maxGpus: must be an integer, got 'eight'"),
    ("mixed GPU models in one pool", _set("tensile:gpuPools.0.instanceTypes", ["g6.xlarge", "g5.xlarge"]),
     "gpuPools[0].instanceTypes[1]: g5.xlarge carries a10g, not l4: one GPU model per pool (mixed models make stragglers)"),
    ("unknown GPU model", _set("tensile:gpuPools.0.gpuModel", "v100"),
     "gpuPools[0].gpuModel: unknown GPU model 'v100': expected one of a100, a10g, h100, h200, l4, l40s"),
    ("no pools", _set("tensile:gpuPools", []), "gpuPools: must list at least one GPU pool"),
    ("one AZ", _set("tensile:network.availabilityZones", ["us-east-1a"]),
     "network.availabilityZones: must list at least 2 AZs for a multi-AZ cluster (got 1)"),
    ("AZ outside the region", _set("tensile:network.availabilityZones", ["us-east-1a", "eu-west-1a"]),
     "network.availabilityZones[1]: 'eu-west-1a' is not an AZ of region us-east-1"),
    ("bad CIDR", _set("tensile:network.cidr", "10.40.0.0/33"),
     "network.cidr: must be a CIDR block such as 203.0.113.0/24 (got '10.40.0.0/33')"),
    ("VPC too small", _set("tensile:network.cidr", "10.40.0.0/24"),
     "network.cidr: prefix must be /16 to /20 so every AZ gets room for pods (got /24)"),
    ("unknown NAT mode", _set("tensile:network.natGateways", "none"),
     "network.natGateways: must be one of per-az, single (got 'none')"),
    ("unknown support type", _set("tensile:cluster.supportType", "FOREVER"),
     "cluster.supportType: must be one of EXTENDED, STANDARD (got 'FOREVER')"),
    ("unknown version", _set("tensile:cluster.kubernetesVersion", "1.29"),
     "cluster.kubernetesVersion: '1.29' is not a known EKS version: use one of 1.35, 1.36"),
    ("system nodes out of order", _set("tensile:cluster.systemNodes.desiredSize", 5),
     "cluster.systemNodes: must satisfy minSize <= desiredSize <= maxSize (got 3 <= 5 <= 4)"),
    ("one system node", _set("tensile:cluster.systemNodes.minSize", 1),
     "cluster.systemNodes.minSize: must be >= 2 (got 1)"),
    ("add-on not pinned", _set("tensile:cluster.addonVersions.coredns", _DELETE),
     "cluster.addonVersions.coredns: is required: pin it (aws eks describe-addon-versions --addon-name NAME)"),
    ("log type misspelt", _set("tensile:cluster.logTypes", ["api", "audits"]),
     "cluster.logTypes[1]: must be one of api, audit, authenticator, controllerManager, scheduler"),
    ("unpinned AMI", _set("tensile:karpenter.amiAlias", "al2023@latest"),
     "karpenter.amiAlias: must pin an AMI release, e.g. al2023@v20261110, not 'al2023@latest'"),
    ("hop limit too high", _set("tensile:karpenter.imdsHopLimit", 8),
     "karpenter.imdsHopLimit: must be 1..3 (2 lets pods read IMDS through the node; got 8)"),
    ("budget zero", _set("tensile:budget.monthlyUsd", 0), "budget.monthlyUsd: must be > 0 (got 0.0)"),
    ("thresholds unordered", _set("tensile:budget.actualThresholds", [80, 50]),
     "budget.actualThresholds: must be increasing without repeats (got [80, 50])"),
    ("bad email", _set("tensile:budget.emails", ["ops"]), "budget.emails[0]: not an email address: 'ops'"),
    ("team quota above pools", _set("tensile:teams.0.gpuQuota", 8),
     "teams[0].gpuQuota: quota 8 + borrowing 1 exceeds the 4 GPUs its pools allow: lower it or raise gpuPools maxGpus"),
    ("team on a model no pool offers", _set("tensile:teams.0.gpuModels", ["h100"]),
     "teams[0].gpuModels[0]: no GPU pool offers 'h100' (pools offer l4)"),
    ("typo in a setting", _set("tensile:gpuPools.0.maxGPUs", 4),
     "gpuPools[0].maxGPUs: unknown setting: expected one of capacityReservationIds, efa, gpuModel, instanceTypes, maxGpus, name, placementGroup, rootVolumeGiB, spot, zones"),
    ("missing region", _set("aws:region", _DELETE), "aws:region: is required: pulumi config set aws:region us-east-1"),
    ("bad reservation id", _set("tensile:gpuPools.0.capacityReservationIds", ["reservation-1"]),
     "gpuPools[0].capacityReservationIds[0]: must be a capacity reservation id cr-..., got 'reservation-1'"),
    ("EFA on a family without it", _set("tensile:gpuPools.0.efa", True),
     "gpuPools[0].instanceTypes[0]: g6.xlarge has no EFA: drop it or set efa: false"),
    ("price without a source", _set("tensile:prices", {"g6.xlarge": {"usdPerHour": 0.8, "asOf": "2026-11-01"}}),
     "prices.g6.xlarge.source: is required"),
    ("team budgets above the stack budget", _set("tensile:teams.0.monthlyBudgetUsd", 6000),
     "teams: team budgets add up to $6,000, more than budget.monthlyUsd $5,000"),
]


@pytest.mark.parametrize("mutate, expected", [(m, e) for _, m, e in BAD_CONFIGS],
                         ids=[name for name, _, _ in BAD_CONFIGS])
def test_config_refuses_bad_values_with_path_and_fix(raw_configs, mutate, expected):
    raw = copy.deepcopy(raw_configs["dev"])
    mutate(raw)
    assert expected in _problems(raw)


def test_config_reports_every_problem_at_once(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:gpuPools"].append({"name": "l4", "gpuModel": "l4", "maxGpus": 0})
    raw["tensile:network"]["natGateways"] = "none"
    problems = _problems(raw)
    assert "gpuPools[1].maxGpus: must be > 0 (got 0)" in problems
    assert "gpuPools[1].name: duplicate pool name 'l4'" in problems
    assert "network.natGateways: must be one of per-az, single (got 'none')" in problems


def test_config_refuses_an_open_api_endpoint_in_prod_only(raw_configs):
    prod = copy.deepcopy(raw_configs["prod"])
    prod["tensile:cluster"]["endpointPublicAccessCidrs"] = ["0.0.0.0/0"]
    assert ("cluster.endpointPublicAccessCidrs[0]: must not open the API to the internet in prod: "
            "list your office/VPN CIDRs or none") in _problems(prod, "prod")
    dev = copy.deepcopy(raw_configs["dev"])
    dev["tensile:cluster"]["endpointPublicAccessCidrs"] = ["0.0.0.0/0"]
    _parse(dev)


def test_config_worst_case_over_budget_refuses_or_warns_as_configured(raw_configs):
    prod = copy.deepcopy(raw_configs["prod"])
    prod["tensile:budget"]["monthlyUsd"] = 240000  # the three pools at their limits cost ~$233.5k + fixed
    prod["tensile:gpuPools"][0]["maxGpus"] = 40
    problems = _problems(prod, "prod")
    assert any(p.startswith("budget.monthlyUsd: stack prod: worst-case monthly cost $") and
               p.endswith("exceeds the budget $240,000; lower the GPU limits/quotas or raise the budget "
                          "(or set budget.onWorstCaseOverBudget: warn)") for p in problems), problems
    prod["tensile:budget"]["onWorstCaseOverBudget"] = "warn"
    parsed = _parse(prod, "prod")
    budget_warnings = [w for w in parsed.warnings if not w.startswith("gpuPools ")]  # the spot role's: its own test
    assert len(budget_warnings) == 1 and budget_warnings[0].startswith("budget.monthlyUsd: stack prod")


def test_config_team_quota_must_fit_the_team_budget(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:teams"][0]["monthlyBudgetUsd"] = 1000  # 3 L4 GPUs at $1.3232/h cost ~$2,898/month
    raw["tensile:budget"]["onWorstCaseOverBudget"] = "refuse"
    assert ("teams[0].monthlyBudgetUsd: team sandbox: worst-case monthly cost $2,898 exceeds the budget $1,000; "
            "lower the GPU limits/quotas or raise the budget (or set budget.onWorstCaseOverBudget: warn)") in _problems(raw)


def test_program_refuses_a_bad_stack_before_declaring_any_resource(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:gpuPools"][0]["maxGpus"] = 0
    run = mocks.run_isolated("dev", config=raw)
    assert run.error_kind == "config"
    assert "gpuPools[0].maxGpus: must be > 0 (got 0)" in run.problems
    assert run.resources == []


def test_read_stack_config_passes_structured_values_as_json_and_skips_secrets(tmp_path):
    (tmp_path / "Pulumi.x.yaml").write_text(
        "config:\n  aws:region: us-east-1\n  tensile:network: {cidr: 10.0.0.0/16}\n"
        "  tensile:alertWebhook:\n    secure: v1:abc\n")
    values, secrets = stack_config.read_stack_config("x", tmp_path)
    assert values == {"aws:region": "us-east-1", "tensile:network": '{"cidr": "10.0.0.0/16"}'}
    assert secrets == ["tensile:alertWebhook"]


@pytest.mark.parametrize("text, message", [
    ("config: [1, 2]\n", "Pulumi.x.yaml: expected a mapping with a `config:` mapping"),
    ("config:\n  region: x\n", "Pulumi.x.yaml: config key 'region' must be namespaced, e.g. tensile:region"),
    ("config: {a: [}\n", "Pulumi.x.yaml is not valid YAML"),
])
def test_read_stack_config_rejects_broken_files(tmp_path, text, message):
    (tmp_path / "Pulumi.x.yaml").write_text(text)
    with pytest.raises(stack_config.StackFileError, match=message.replace("[", r"\[").replace("`", "`")):
        stack_config.read_stack_config("x", tmp_path)


def test_read_stack_config_names_the_known_stacks_for_an_unknown_one():
    with pytest.raises(stack_config.StackFileError, match=r"no stack 'staging': Pulumi.staging.yaml not found \(stacks here: dev, prod\)"):
        stack_config.read_stack_config("staging")
