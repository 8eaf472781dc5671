"""Planning functions: subnets, NAT, capacity-type order, limits, zone splits, pool plans, notifications."""

from __future__ import annotations

import ipaddress

import pytest

from infra.config import types as config
from infra.plan import budgets as budget_plan
from infra.plan import network as network_plan
from infra.plan import pools as planning

KARPENTER = config.KarpenterConfig(chart_version="1.14.1", ami_alias="al2023@v20261110", imds_hop_limit=2,
                                   termination_grace_period="2h", expire_after="720h")


def _pool(**overrides) -> config.GpuPoolConfig:
    values = dict(name="l4", gpu_model="l4", instance_types=("g6.xlarge", "g6.12xlarge"), max_gpus=8, spot=True,
                  capacity_reservation_ids=(), zones=("us-east-1a", "us-east-1b"), root_volume_gib=200, efa=False)
    values.update(overrides)
    return config.GpuPoolConfig(**values)


@pytest.mark.parametrize("cidr, azs, nat, private, public, nat_index", [
    ("10.40.0.0/16", ["a", "b"], "single", ["10.40.0.0/19", "10.40.32.0/19"],
     ["10.40.224.0/22", "10.40.228.0/22"], [0, 0]),
    ("10.50.0.0/16", ["a", "b", "c"], "per-az", ["10.50.0.0/19", "10.50.32.0/19", "10.50.64.0/19"],
     ["10.50.224.0/22", "10.50.228.0/22", "10.50.232.0/22"], [0, 1, 2]),
    ("172.16.0.0/20", ["a", "b"], "per-az", ["172.16.0.0/23", "172.16.2.0/23"],
     ["172.16.14.0/26", "172.16.14.64/26"], [0, 1]),
])
def test_plan_subnets(cidr, azs, nat, private, public, nat_index):
    plan = network_plan.plan_subnets(cidr, azs, nat)
    assert [p.private_cidr for p in plan] == private
    assert [p.public_cidr for p in plan] == public
    assert [p.nat_index for p in plan] == nat_index
    blocks = [ipaddress.ip_network(c) for c in private + public]
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])


def test_plan_subnets_refuses_more_azs_than_fit():
    with pytest.raises(ValueError, match="7 AZs do not fit 10.0.0.0/16: at most 6"):
        network_plan.plan_subnets("10.0.0.0/16", list("abcdefg"), "single")


@pytest.mark.parametrize("azs, mode, expected", [(["a", "b"], "single", 1), (["a", "b", "c"], "per-az", 3)])
def test_nat_gateway_count(azs, mode, expected):
    assert config.nat_gateway_count(azs, mode) == expected


@pytest.mark.parametrize("reserved, spot, expected", [
    (False, True, ["spot", "on-demand"]),
    (True, True, ["reserved", "spot", "on-demand"]),
    (True, False, ["reserved", "on-demand"]),
    (False, False, ["on-demand"]),
])
def test_capacity_type_order_always_ends_on_demand(reserved, spot, expected):
    assert planning.capacity_type_order(reserved=reserved, spot=spot) == expected


@pytest.mark.parametrize("types, gpus, expected", [
    (["g6.xlarge"], 4, {"nvidia.com/gpu": "4", "cpu": "16", "memory": "64Gi"}),
    (["g6.xlarge", "g6.4xlarge"], 2, {"nvidia.com/gpu": "2", "cpu": "32", "memory": "128Gi"}),
    (["p5.48xlarge"], 16, {"nvidia.com/gpu": "16", "cpu": "384", "memory": "4096Gi"}),
])
def test_pool_limits_follow_the_widest_host_per_gpu(types, gpus, expected):
    assert planning.pool_limits(types, gpus) == expected


@pytest.mark.parametrize("max_gpus, zones, node_gpus, expected", [
    (32, ["a", "b"], 8, {"a": 16, "b": 16}),
    (32, ["a", "b", "c"], 8, {"a": 16, "b": 8, "c": 8}),
    (20, ["a", "b"], 8, {"a": 8, "b": 8}),  # whole nodes only: never above the configured max
    (16, ["a"], 8, {"a": 16}),
])
def test_split_across_zones_in_whole_nodes(max_gpus, zones, node_gpus, expected):
    split = planning.split_across_zones(max_gpus, zones, node_gpus)
    assert split == expected and sum(split.values()) <= max_gpus


def test_plan_gpu_pools_shares_a_class_for_plain_pools_and_splits_efa_pools_by_zone():
    pools = [
        _pool(),
        _pool(name="l40s", gpu_model="l40s", instance_types=("g6e.12xlarge",), max_gpus=16),
        _pool(name="h100", gpu_model="h100", instance_types=("p5.48xlarge",), max_gpus=32, efa=True,
              capacity_reservation_ids=("cr-0abc",), root_volume_gib=500),
    ]
    classes, node_pools = planning.plan_gpu_pools(pools, cluster_name="c", node_role="r", karpenter=KARPENTER,
                                                  tags={"t": "v"})
    assert [(c.name, c.efa, c.placement_group) for c in classes] == [
        ("gpu-200gi", False, None), ("h100-us-east-1a", True, "c-h100-us-east-1a"),
        ("h100-us-east-1b", True, "c-h100-us-east-1b")]
    assert [(n.name, n.node_class, n.zones, n.max_gpus) for n in node_pools] == [
        ("l4", "gpu-200gi", ("us-east-1a", "us-east-1b"), 8),
        ("l40s", "gpu-200gi", ("us-east-1a", "us-east-1b"), 16),
        ("h100-us-east-1a", "h100-us-east-1a", ("us-east-1a",), 16),
        ("h100-us-east-1b", "h100-us-east-1b", ("us-east-1b",), 16)]
    efa_class = classes[1].spec
    assert efa_class["capacityReservationSelectorTerms"] == [{"id": "cr-0abc"}]
    assert {"tags": {"tensile.io/efa": "c"}} in efa_class["securityGroupSelectorTerms"]
    reqs = {r["key"]: r["values"] for r in node_pools[2].spec["template"]["spec"]["requirements"]}
    assert reqs["karpenter.sh/capacity-type"] == ["reserved", "spot", "on-demand"]


def test_node_class_spec_pins_imdsv2_hop_limit_and_encrypted_root():
    spec = planning.node_class_spec(cluster_name="c", node_role="r", karpenter=KARPENTER, root_volume_gib=300,
                                    tags={"a": "b"}, efa=False, placement_group=None, capacity_reservation_ids=(),
                                    instance_store=True)
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 2
    assert spec["blockDeviceMappings"][0]["ebs"] == {"volumeSize": "300Gi", "volumeType": "gp3", "encrypted": True,
                                                     "deleteOnTermination": True}
    assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "c"}}]
    assert "placementGroupSelector" not in spec and "capacityReservationSelectorTerms" not in spec


def test_node_pool_spec_disruption_keeps_training_nodes():
    spec = planning.node_pool_spec(_pool(), zones=["us-east-1a"], max_gpus=8, node_class="gpu", karpenter=KARPENTER)
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert {"nodes": "0", "reasons": ["Drifted", "Underutilized"]} in spec["disruption"]["budgets"]
    assert spec["template"]["spec"]["terminationGracePeriod"] == "2h"
    assert spec["template"]["spec"]["expireAfter"] == "720h"


@pytest.mark.parametrize("actual, forecast, expected", [
    ([50, 100], [100], [("ACTUAL", 50.0), ("ACTUAL", 100.0), ("FORECASTED", 100.0)]),
    ([80], [], [("ACTUAL", 80.0)]),
])
def test_budget_notifications(actual, forecast, expected):
    got = budget_plan.budget_notifications(actual, forecast)
    assert [(n["notification_type"], n["threshold"]) for n in got] == expected
    assert {n["threshold_type"] for n in got} == {"PERCENTAGE"}


def test_team_gpu_hour_prices_charge_the_dearest_size_per_model():
    from infra import cost
    prices = budget_plan.team_gpu_hour_prices([_pool(), _pool(name="l4b", instance_types=("g6.4xlarge",))],
                                           cost.price_book())
    assert prices == {"l4": pytest.approx(1.3232)}
