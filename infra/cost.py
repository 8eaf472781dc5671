"""Tensile's cost model: GPU instance catalogue, on-demand prices with their provenance, spot
assumptions, and the bounds a stack can cost. Pure Python, no Pulumi, so the policy pack imports it too.

Every number that ends up in a bound is traceable: prices carry a date and a source, spot
discounts are labelled assumptions, and both can be overridden per stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

HOURS_PER_MONTH = 730.0
"""AWS bills and prices a month as 730 hours (8,760 / 12)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class InstanceType:
    """One EC2 instance type Tensile may launch for training."""

    name: str
    gpu_model: str
    """Karpenter's `karpenter.k8s.aws/instance-gpu-name` value (lower case)."""
    gpus: int
    vcpus: int
    memory_gib: int
    efa: bool = False
    """Supports Elastic Fabric Adapter (multi-node NCCL without falling back to TCP)."""

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    """An hourly price and where it came from."""

    usd_per_hour: float
    as_of: str
    """ISO date the price was read."""
    source: str


def _catalogue(*rows: tuple[str, str, int, int, int, bool]) -> dict[str, InstanceType]:
    return {
        name: InstanceType(name=name, gpu_model=model, gpus=gpus, vcpus=vcpus, memory_gib=mem, efa=efa)
        for name, model, gpus, vcpus, mem, efa in rows
    }


# Instance shapes from the EC2 accelerated-computing instance type pages.
CATALOGUE: dict[str, InstanceType] = _catalogue(
    ("g5.xlarge", "a10g", 1, 4, 16, False),
    ("g5.2xlarge", "a10g", 1, 8, 32, False),
    ("g5.4xlarge", "a10g", 1, 16, 64, False),
    ("g5.12xlarge", "a10g", 4, 48, 192, False),
    ("g5.48xlarge", "a10g", 8, 192, 768, False),
    ("g6.xlarge", "l4", 1, 4, 16, False),
    ("g6.2xlarge", "l4", 1, 8, 32, False),
    ("g6.4xlarge", "l4", 1, 16, 64, False),
    ("g6.12xlarge", "l4", 4, 48, 192, False),
    ("g6.48xlarge", "l4", 8, 192, 768, False),
    ("g6e.xlarge", "l40s", 1, 4, 32, False),
    ("g6e.2xlarge", "l40s", 1, 8, 64, False),
    ("g6e.12xlarge", "l40s", 4, 48, 384, False),
    ("g6e.24xlarge", "l40s", 4, 96, 768, True),
    ("g6e.48xlarge", "l40s", 8, 192, 1536, True),
    ("p4d.24xlarge", "a100", 8, 96, 1152, True),
    ("p4de.24xlarge", "a100", 8, 96, 1152, True),
    ("p5.48xlarge", "h100", 8, 192, 2048, True),
    ("p5e.48xlarge", "h200", 8, 192, 2048, True),
    ("p5en.48xlarge", "h200", 8, 192, 2048, True),
)

DEFAULT_PRICE_REGION = "us-east-1"
"""The region the default price table is for. Other regions price differently and were not read
from this offline machine: a stack elsewhere overrides every instance type it uses (stack.py)."""
_OD_SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/ (us-east-1, Linux, shared tenancy)"
_OD_AS_OF = "2025-06-05"
# P4/P5 on-demand prices are those after AWS's June 2025 price cut for those families.
# These are seed values, not read live by the program: override them per stack
# (`tensile:prices`) when the price page changes; the date makes a stale price visible.
DEFAULT_ON_DEMAND_PRICES: dict[str, Price] = {
    name: Price(usd_per_hour=usd, as_of=_OD_AS_OF, source=_OD_SOURCE)
    for name, usd in {
        "g5.xlarge": 1.006,
        "g5.2xlarge": 1.212,
        "g5.4xlarge": 1.624,
        "g5.12xlarge": 5.672,
        "g5.48xlarge": 16.288,
        "g6.xlarge": 0.8048,
        "g6.2xlarge": 0.9776,
        "g6.4xlarge": 1.3232,
        "g6.12xlarge": 4.6016,
        "g6.48xlarge": 13.3504,
        "g6e.xlarge": 1.861,
        "g6e.2xlarge": 2.24208,
        "g6e.12xlarge": 10.49264,
        "g6e.24xlarge": 15.06559,
        "g6e.48xlarge": 30.13118,
        "p4d.24xlarge": 21.96,
        "p4de.24xlarge": 27.447,
        "p5.48xlarge": 55.04,
        "p5e.48xlarge": 62.40,
        "p5en.48xlarge": 63.296,
        # Non-GPU items a stack always pays for.
        "m7i.large": 0.1008,
        "m7i.xlarge": 0.2016,
        "m7i.2xlarge": 0.4032,
    }.items()
}

EKS_CONTROL_PLANE = Price(
    usd_per_hour=0.10, as_of=_OD_AS_OF, source="https://aws.amazon.com/eks/pricing/ (standard support)"
)
NAT_GATEWAY = Price(
    usd_per_hour=0.045, as_of=_OD_AS_OF, source="https://aws.amazon.com/vpc/pricing/ (per NAT gateway hour)"
)

DEFAULT_SPOT_DISCOUNT = 0.60
"""Assumption, not a quote: spot usually saves 60-70% on GPU instances (EC2 Spot Instance
Advisor). Used only for the optimistic bound; the hard bound is always all on-demand."""
DEFAULT_SPOT_DISCOUNTS: dict[str, float] = {"a10g": 0.65, "l4": 0.65, "l40s": 0.60, "a100": 0.55, "h100": 0.50, "h200": 0.45}


class CostModelError(ValueError):
    """An instance type the model cannot price, or a malformed price override."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceBook:
    """On-demand prices and spot discounts after stack overrides."""

    on_demand: Mapping[str, Price]
    spot_discounts: Mapping[str, float]
    default_spot_discount: float = DEFAULT_SPOT_DISCOUNT

    def on_demand_per_hour(self, instance_type: str) -> float:
        try:
            return self.on_demand[instance_type].usd_per_hour
        except KeyError:
            raise CostModelError(
                f"no on-demand price for {instance_type}: add it under tensile:prices"
            ) from None

    def spot_discount(self, gpu_model: str) -> float:
        return self.spot_discounts.get(gpu_model, self.default_spot_discount)


def price_book(
    overrides: Mapping[str, Price] | None = None, spot_discounts: Mapping[str, float] | None = None
) -> PriceBook:
    """Default prices with a stack's overrides on top."""
    return PriceBook(
        on_demand={**DEFAULT_ON_DEMAND_PRICES, **(overrides or {})},
        spot_discounts={**DEFAULT_SPOT_DISCOUNTS, **(spot_discounts or {})},
    )


def default_priced(prices: PriceBook, instance_type: str) -> bool:
    """Whether the book prices `instance_type` from the default (us-east-1) table, not an override."""
    return prices.on_demand.get(instance_type) is DEFAULT_ON_DEMAND_PRICES.get(instance_type)


def instance_types_for(gpu_model: str) -> list[str]:
    """Catalogue instance types carrying `gpu_model`, smallest first."""
    return [t.name for t in CATALOGUE.values() if t.gpu_model == gpu_model]


def lookup(instance_type: str) -> InstanceType:
    try:
        return CATALOGUE[instance_type]
    except KeyError:
        raise CostModelError(f"{instance_type} is not a GPU instance type in the catalogue") from None


def per_gpu_hour(instance_type: str, prices: PriceBook, *, spot: bool = False) -> float:
    shape = lookup(instance_type)
    hourly = prices.on_demand_per_hour(instance_type) / shape.gpus
    return hourly * (1.0 - prices.spot_discount(shape.gpu_model)) if spot else hourly


def worst_per_gpu_hour(instance_types: Iterable[str], prices: PriceBook, *, spot: bool = False) -> float:
    """The dearest GPU-hour a pool limited to `instance_types` can buy: with the pool's GPU limit
    this bounds its spend whatever mix of sizes Karpenter picks."""
    return max(per_gpu_hour(t, prices, spot=spot) for t in instance_types)


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolSpec:
    """What the model needs to know about one GPU NodePool."""

    name: str
    instance_types: tuple[str, ...]
    max_gpus: int
    min_gpus: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class FixedSpec:
    """Capacity a stack pays for whether or not anything trains."""

    system_instance_type: str
    system_nodes_min: int
    system_nodes_max: int
    nat_gateways: int
    control_planes: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolCost:
    name: str
    max_gpus: int
    hourly_at_max_on_demand: float
    hourly_at_max_spot: float
    hourly_at_min_on_demand: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CostEstimate:
    """Hourly and monthly bounds for a stack, in USD."""

    pools: tuple[PoolCost, ...]
    fixed_hourly_min: float
    fixed_hourly_max: float
    hourly_at_min: float
    """Everything scaled in: GPU pools at their minimum (Karpenter: usually zero)."""
    hourly_at_max_all_spot: float
    hourly_at_max_all_on_demand: float
    """The hard ceiling: every pool at its GPU limit, every GPU on-demand at the dearest size."""

    @property
    def monthly_at_min(self) -> float:
        return self.hourly_at_min * HOURS_PER_MONTH

    @property
    def monthly_at_max_all_spot(self) -> float:
        return self.hourly_at_max_all_spot * HOURS_PER_MONTH

    @property
    def monthly_at_max_all_on_demand(self) -> float:
        return self.hourly_at_max_all_on_demand * HOURS_PER_MONTH

    @property
    def worst_case_monthly(self) -> float:
        return self.monthly_at_max_all_on_demand


def estimate(pools: Iterable[PoolSpec], fixed: FixedSpec, prices: PriceBook) -> CostEstimate:
    pool_costs = []
    for pool in pools:
        od = worst_per_gpu_hour(pool.instance_types, prices)
        spot = worst_per_gpu_hour(pool.instance_types, prices, spot=True)
        pool_costs.append(
            PoolCost(
                name=pool.name,
                max_gpus=pool.max_gpus,
                hourly_at_max_on_demand=pool.max_gpus * od,
                hourly_at_max_spot=pool.max_gpus * spot,
                hourly_at_min_on_demand=pool.min_gpus * od,
            )
        )
    system = prices.on_demand_per_hour(fixed.system_instance_type)
    base = fixed.control_planes * EKS_CONTROL_PLANE.usd_per_hour + fixed.nat_gateways * NAT_GATEWAY.usd_per_hour
    fixed_min = base + fixed.system_nodes_min * system
    fixed_max = base + fixed.system_nodes_max * system
    return CostEstimate(
        pools=tuple(pool_costs),
        fixed_hourly_min=fixed_min,
        fixed_hourly_max=fixed_max,
        hourly_at_min=fixed_min + sum(p.hourly_at_min_on_demand for p in pool_costs),
        hourly_at_max_all_spot=fixed_max + sum(p.hourly_at_max_spot for p in pool_costs),
        hourly_at_max_all_on_demand=fixed_max + sum(p.hourly_at_max_on_demand for p in pool_costs),
    )


def team_worst_case_monthly(
    *, quota_gpus: int, borrowing_limit_gpus: int, instance_types: Iterable[str], prices: PriceBook
) -> float:
    """A team's queue can hold at most quota + borrowing limit GPUs, priced on-demand at the
    dearest size it may land on: the most its metered spend can grow in a month."""
    return (quota_gpus + borrowing_limit_gpus) * worst_per_gpu_hour(instance_types, prices) * HOURS_PER_MONTH


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetCheck:
    """The worst case against a budget: `ok` is False only when it exceeds and must refuse."""

    subject: str
    worst_case_monthly: float
    budget_monthly: float
    exceeds: bool
    refuse: bool
    message: str = field(default="")

    @property
    def ok(self) -> bool:
        return not self.refuse


def check_budget(*, subject: str, worst_case_monthly: float, budget_monthly: float, mode: str) -> BudgetCheck:
    """Compare a worst case with its budget. `mode` is "warn" or "refuse" (what to do when it exceeds)."""
    if mode not in ("warn", "refuse"):
        raise CostModelError(f"mode must be 'warn' or 'refuse', got {mode!r}")
    exceeds = worst_case_monthly > budget_monthly
    message = ""
    if exceeds:
        message = (
            f"{subject}: worst-case monthly cost ${worst_case_monthly:,.0f} exceeds the budget "
            f"${budget_monthly:,.0f}; lower the GPU limits/quotas or raise the budget"
        )
    return BudgetCheck(
        subject=subject,
        worst_case_monthly=worst_case_monthly,
        budget_monthly=budget_monthly,
        exceeds=exceeds,
        refuse=exceeds and mode == "refuse",
        message=message,
    )


def max_gpus_within_budget(*, budget_monthly: float, instance_types: Iterable[str], prices: PriceBook) -> int:
    """The largest GPU count whose on-demand worst case fits the budget (a team quota's ceiling)."""
    per_gpu_month = worst_per_gpu_hour(instance_types, prices) * HOURS_PER_MONTH
    return max(0, math.floor(budget_monthly / per_gpu_month + 1e-9))
