"""Issue 17 item 8, the last two: borrowing in the teams' cohort can happen (the cohort holds each
GPU model's unassigned capacity, since no two prod teams share a flavor), and a stack outside the
default price table's region prices every instance type it uses itself."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from infra import cost
from infra.config import stack as stack_config
from infra.config.types import ConfigError
from infra.plan import teams as team_plan

TODAY = dt.date(2026, 11, 28)
GPU = "nvidia.com/gpu"


def _gpu_quota(flavor_entry: dict, key: str = "nominalQuota") -> int:
    return int(next(r for r in flavor_entry["resources"] if r["name"] == GPU).get(key, 0))


def _kueue(run, kind):
    return [r["inputs"] for r in run.resources if r["type"] == f"kubernetes:kueue.x-k8s.io/v1beta2:{kind}"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_team_can_borrow_up_to_its_borrowing_limit(stack, example_runs):
    """Kueue lends a queue, up to its borrowingLimit, the unused quota of the same flavor held by its
    cohort and the cohort's other members; read from the rendered Cohort and ClusterQueues."""
    run = example_runs[stack]
    (cohort,) = _kueue(run, "Cohort")
    cohort_gpus = {f["name"]: _gpu_quota(f) for g in cohort["spec"].get("resourceGroups", []) for f in g["flavors"]}
    queues = {q["metadata"]["name"]: {f["name"]: f for g in q["spec"]["resourceGroups"] for f in g["flavors"]}
              for q in _kueue(run, "ClusterQueue")}
    borrowing = 0
    for team, flavors in queues.items():
        for flavor, entry in flavors.items():
            limit = _gpu_quota(entry, "borrowingLimit")
            lendable = cohort_gpus.get(flavor, 0) + sum(_gpu_quota(other[flavor]) for name, other in queues.items()
                                                        if name != team and flavor in other)
            assert lendable >= limit, f"{stack}: {team} may borrow {limit} {flavor} GPUs, its cohort lends {lendable}"
            borrowing += limit
    assert borrowing > 0


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_cohort_holds_no_more_than_the_pools_leave(stack, raw_configs):
    cfg = stack_config.parse(raw_configs[stack], stack=stack, today=TODAY)
    quotas = [team_plan.team_quota(t, cfg.gpu_pools, cfg.prices) for t in cfg.teams]
    shared = team_plan.cohort_shared_gpus(quotas, cfg.gpu_pools)
    for model, gpus in shared.items():
        capacity = sum(p.max_gpus for p in cfg.gpu_pools if p.gpu_model == model)
        assert gpus + sum(f.nominal_gpus for q in quotas for f in q.flavors if f.flavor == model) == capacity
    # prod: the llm team alone uses a100 and h100, vision alone l40s; each still borrows.
    assert all(team_plan.borrowable_gpus(q.team, f.flavor, quotas, shared) == f.borrowing_gpus
               for q in quotas for f in q.flavors)


def _elsewhere(raw_configs, region="eu-west-1"):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["aws:region"] = region
    raw["tensile:network"]["availabilityZones"] = [f"{region}a", f"{region}b"]
    return raw


def test_a_region_without_default_prices_is_refused_with_the_types_to_price(raw_configs):
    with pytest.raises(ConfigError) as refused:
        stack_config.parse(_elsewhere(raw_configs), stack="dev", today=TODAY)
    (problem,) = [str(p) for p in refused.value.problems if str(p).startswith("aws:region")]
    assert "covers us-east-1 only" in problem and "eu-west-1" in problem
    assert "g6.12xlarge, g6.2xlarge, g6.4xlarge, g6.xlarge, m7i.large" in problem and "tensile:prices" in problem


def test_a_region_is_accepted_once_every_type_it_uses_has_its_own_price(raw_configs):
    raw = _elsewhere(raw_configs)
    raw["tensile:prices"] = {t: {"usdPerHour": cost.DEFAULT_ON_DEMAND_PRICES[t].usd_per_hour * 1.1,
                                 "asOf": "2026-11-20", "source": "https://aws.amazon.com/ec2/pricing/on-demand/ (eu-west-1)"}
                             for t in ("g6.xlarge", "g6.2xlarge", "g6.4xlarge", "g6.12xlarge", "m7i.large")}
    cfg = stack_config.parse(raw, stack="dev", today=TODAY)
    assert cfg.region == "eu-west-1"
    assert not any(cost.default_priced(cfg.prices, t) for t in cfg.gpu_pools[0].instance_types)
