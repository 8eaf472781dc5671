"""The cost model: prices with provenance, per-GPU worst cases, stack bounds, budget checks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from infra import cost

PRICES = cost.price_book()


def test_cost_module_imports_without_pulumi():
    """The policy pack imports this module: it must not pull in the Pulumi SDK."""
    tree = ast.parse(Path(cost.__file__).read_text())
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("pulumi")}, imported


def test_cost_every_catalogue_type_has_a_dated_sourced_price():
    for name in cost.CATALOGUE:
        price = cost.DEFAULT_ON_DEMAND_PRICES[name]
        assert price.usd_per_hour > 0
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.as_of)
        assert price.source.startswith("https://aws.amazon.com/")


@pytest.mark.parametrize("instance_type, spot, expected", [
    ("g6.xlarge", False, 0.8048),
    ("g6.12xlarge", False, 4.6016 / 4),
    ("p5.48xlarge", False, 55.04 / 8),
    ("p5.48xlarge", True, 55.04 / 8 * 0.5),
    ("g6e.48xlarge", True, 30.13118 / 8 * 0.4),
])
def test_cost_per_gpu_hour(instance_type, spot, expected):
    assert cost.per_gpu_hour(instance_type, PRICES, spot=spot) == pytest.approx(expected)


@pytest.mark.parametrize("types, expected", [
    (["g6.xlarge"], 0.8048),
    (["g6.xlarge", "g6.4xlarge", "g6.12xlarge"], 1.3232),  # the 1-GPU 4xlarge is the dearest GPU-hour
    (["g6e.12xlarge", "g6e.24xlarge"], 15.06559 / 4),
])
def test_cost_worst_per_gpu_hour_takes_the_dearest_size(types, expected):
    assert cost.worst_per_gpu_hour(types, PRICES) == pytest.approx(expected)


def test_cost_overrides_replace_a_price_and_keep_its_provenance():
    book = cost.price_book({"g6.xlarge": cost.Price(usd_per_hour=0.5, as_of="2026-11-01", source="quote #42")},
                           {"l4": 0.9})
    assert book.on_demand["g6.xlarge"].source == "quote #42"
    assert cost.per_gpu_hour("g6.xlarge", book, spot=True) == pytest.approx(0.05)
    assert book.on_demand["g6.2xlarge"] == cost.DEFAULT_ON_DEMAND_PRICES["g6.2xlarge"]


def test_cost_unknown_instance_type_names_the_fix():
    with pytest.raises(cost.CostModelError, match="no on-demand price for x9.huge: add it under tensile:prices"):
        PRICES.on_demand_per_hour("x9.huge")
    with pytest.raises(cost.CostModelError, match="not a GPU instance type"):
        cost.lookup("m7i.large")


FIXED = cost.FixedSpec(system_instance_type="m7i.large", system_nodes_min=2, system_nodes_max=3, nat_gateways=1)


@pytest.mark.parametrize("pools, at_min, spot_max, od_max", [
    # Nothing but the fixed part: control plane + NAT + system nodes.
    ([], 0.10 + 0.045 + 2 * 0.1008, 0.10 + 0.045 + 3 * 0.1008, 0.10 + 0.045 + 3 * 0.1008),
    ([cost.PoolSpec(name="l4", instance_types=("g6.xlarge",), max_gpus=4)],
     0.3466, 0.4474 + 4 * 0.8048 * 0.35, 0.4474 + 4 * 0.8048),
    ([cost.PoolSpec(name="l4", instance_types=("g6.xlarge",), max_gpus=4, min_gpus=1),
      cost.PoolSpec(name="h100", instance_types=("p5.48xlarge",), max_gpus=16)],
     0.3466 + 0.8048, 0.4474 + 4 * 0.8048 * 0.35 + 16 * 6.88 * 0.5, 0.4474 + 4 * 0.8048 + 16 * 6.88),
])
def test_cost_estimate_bounds(pools, at_min, spot_max, od_max):
    e = cost.estimate(pools, FIXED, PRICES)
    assert e.hourly_at_min == pytest.approx(at_min)
    assert e.hourly_at_max_all_spot == pytest.approx(spot_max)
    assert e.hourly_at_max_all_on_demand == pytest.approx(od_max)
    assert e.worst_case_monthly == pytest.approx(od_max * 730)
    assert e.monthly_at_min <= e.monthly_at_max_all_spot <= e.monthly_at_max_all_on_demand


@pytest.mark.parametrize("worst, budget, mode, exceeds, refuse", [
    (900.0, 1000.0, "refuse", False, False),
    (1000.0, 1000.0, "refuse", False, False),  # exactly at the budget is within it
    (1000.01, 1000.0, "refuse", True, True),
    (5000.0, 1000.0, "warn", True, False),
])
def test_cost_check_budget(worst, budget, mode, exceeds, refuse):
    check = cost.check_budget(subject="stack x", worst_case_monthly=worst, budget_monthly=budget, mode=mode)
    assert (check.exceeds, check.refuse, check.ok) == (exceeds, refuse, not refuse)
    assert bool(check.message) == exceeds


def test_cost_check_budget_rejects_an_unknown_mode():
    with pytest.raises(cost.CostModelError, match="mode must be 'warn' or 'refuse'"):
        cost.check_budget(subject="x", worst_case_monthly=1, budget_monthly=1, mode="ignore")


@pytest.mark.parametrize("quota, borrow, types, expected", [
    (2, 1, ["g6.xlarge", "g6.4xlarge"], 3 * 1.3232 * 730),
    (8, 0, ["p4d.24xlarge", "p5.48xlarge"], 8 * 6.88 * 730),
])
def test_cost_team_worst_case_prices_quota_plus_borrowing_on_demand(quota, borrow, types, expected):
    got = cost.team_worst_case_monthly(quota_gpus=quota, borrowing_limit_gpus=borrow, instance_types=types, prices=PRICES)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("budget, types, expected", [
    (3000.0, ["g6.4xlarge"], 3),      # 1.3232 * 730 = $966 a GPU-month
    (965.0, ["g6.4xlarge"], 0),
    (100_000.0, ["p5.48xlarge"], 19),
])
def test_cost_max_gpus_within_budget(budget, types, expected):
    assert cost.max_gpus_within_budget(budget_monthly=budget, instance_types=types, prices=PRICES) == expected
