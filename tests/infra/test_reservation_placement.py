"""A targeted capacity reservation in an EFA pool (a cluster placement group): Karpenter 1.14.1
launches reserved instances into the node class's placement group, which EC2 fills only from a
reservation made in that group, so the pool names the reservation's group and the stack creates
none for it; the combination without it is refused with the reason."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from infra.config import stack as stack_config
from infra.config.types import ConfigError
from infra.plan import pools as pool_plan

TODAY = dt.date(2026, 11, 28)
H100 = 2  # prod's reserved EFA pool


def _problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        stack_config.parse(raw, stack="prod", today=TODAY)
    return [str(p) for p in info.value.problems]


def test_a_reserved_efa_pool_without_the_reservations_placement_group_is_refused(raw_configs):
    raw = copy.deepcopy(raw_configs["prod"])
    del raw["tensile:gpuPools"][H100]["placementGroup"]
    (problem,) = [p for p in _problems(raw) if p.startswith(f"gpuPools[{H100}].capacityReservationIds")]
    assert "pkg/providers/launchtemplate/types.go" in problem
    assert "--placement-group-arn" in problem and "set placementGroup: NAME" in problem


@pytest.mark.parametrize("change, expected", [
    (lambda pool: pool.update(efa=False, instanceTypes=["p5.48xlarge"]), "only an EFA pool"),
    (lambda pool: pool.update(zones=["us-east-1a", "us-east-1b"]), "lives in one zone"),
])
def test_placement_group_needs_an_efa_pool_in_one_zone(raw_configs, change, expected):
    raw = copy.deepcopy(raw_configs["prod"])
    change(raw["tensile:gpuPools"][H100])
    assert any(p.startswith(f"gpuPools[{H100}].placementGroup") and expected in p for p in _problems(raw))


def test_a_named_placement_group_is_selected_and_not_created(prod):
    groups = [r["inputs"]["name"] for r in prod.of_type("aws:ec2/placementGroup:PlacementGroup")]
    assert "tensile-prod-h100-us-east-1a" not in groups
    assert sorted(groups) == ["tensile-prod-a100-us-east-1a", "tensile-prod-a100-us-east-1b"]
    classes = {r["inputs"]["metadata"]["name"]: r["inputs"]["spec"] for r in prod.resources
               if r["type"].endswith(":EC2NodeClass")}
    h100 = classes["h100-us-east-1a"]
    assert h100["placementGroupSelector"] == {"name": "tensile-prod-h100-us-east-1a"}
    assert h100["capacityReservationSelectorTerms"] == [{"id": "cr-0a1b2c3d4e5f60718"}]


def test_plan_creates_a_group_only_where_the_config_names_none(raw_configs):
    cfg = stack_config.parse(raw_configs["prod"], stack="prod", today=TODAY)
    classes, _ = pool_plan.plan_gpu_pools(cfg.gpu_pools, cluster_name="tensile-prod", node_role="r",
                                          karpenter=cfg.karpenter, tags={})
    created = {c.name: c.creates_placement_group for c in classes if c.placement_group}
    assert created == {"a100-us-east-1a": True, "a100-us-east-1b": True, "h100-us-east-1a": False}
