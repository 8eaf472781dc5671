"""The stack's cost bounds and the budget refusals: capacity priced through the cost model
(infra/cost.py) must fit the stack's and each team's budget before any resource is declared,
at prices of the stack's own region."""

from __future__ import annotations

from typing import Iterable

from infra import cost
from infra.config.reader import Reader
from infra.config.types import BudgetConfig, ClusterConfig, GpuPoolConfig, NetworkConfig, nat_gateway_count


def cost_estimate(*, pools: Iterable[GpuPoolConfig], cluster: ClusterConfig, network: NetworkConfig,
                  prices: cost.PriceBook) -> cost.CostEstimate:
    specs = [cost.PoolSpec(name=p.name, instance_types=p.instance_types, max_gpus=p.max_gpus) for p in pools]
    fixed = cost.FixedSpec(
        system_instance_type=cluster.system_nodes.instance_type,
        system_nodes_min=cluster.system_nodes.min_size,
        system_nodes_max=cluster.system_nodes.max_size,
        nat_gateways=nat_gateway_count(network.availability_zones, network.nat_gateways),
    )
    return cost.estimate(specs, fixed, prices)


def check_costs(r: Reader, *, stack: str, pools, teams, budget: BudgetConfig, cluster: ClusterConfig,
                 network: NetworkConfig, prices: cost.PriceBook) -> list[str]:
    """Capacity is the hard bound: the worst case at the NodePools' limits and each team's quota
    (with borrowing) must fit the budgets. Over budget refuses or warns, per budget.onWorstCaseOverBudget."""
    warnings: list[str] = []
    checks: list[tuple[str, cost.BudgetCheck]] = []
    estimate = cost_estimate(pools=pools, cluster=cluster, network=network, prices=prices)
    checks.append(("budget.monthlyUsd", cost.check_budget(
        subject=f"stack {stack}", worst_case_monthly=estimate.worst_case_monthly,
        budget_monthly=budget.monthly_usd, mode=budget.on_worst_case_over_budget)))
    for i, team in enumerate(teams):
        types = [t for p in pools if p.gpu_model in team.gpu_models for t in p.instance_types]
        worst = cost.team_worst_case_monthly(quota_gpus=team.gpu_quota, borrowing_limit_gpus=team.borrowing_limit,
                                             instance_types=types, prices=prices)
        checks.append((f"teams[{i}].monthlyBudgetUsd", cost.check_budget(
            subject=f"team {team.name}", worst_case_monthly=worst, budget_monthly=team.monthly_budget_usd,
            mode=budget.on_worst_case_over_budget)))
    team_total = sum(t.monthly_budget_usd for t in teams)
    if team_total > budget.monthly_usd:
        r.problem("teams", f"team budgets add up to ${team_total:,.0f}, more than budget.monthlyUsd ${budget.monthly_usd:,.0f}")
    for path, check in checks:
        if check.refuse:
            r.problem(path, check.message + " (or set budget.onWorstCaseOverBudget: warn)")
        elif check.exceeds:
            warnings.append(f"{path}: {check.message}")
    return warnings


def check_region_prices(r: Reader, region: str, pools: tuple[GpuPoolConfig, ...], cluster: ClusterConfig | None,
                        prices: cost.PriceBook) -> None:
    """The default price table is us-east-1's; elsewhere the budget checks would price GPUs at
    another region's rates, so a stack there gives its own price for every instance type it uses."""
    if not region or region == cost.DEFAULT_PRICE_REGION:
        return
    used = [t for p in pools for t in p.instance_types]
    if cluster is not None:
        used.append(cluster.system_nodes.instance_type)
    missing = sorted({t for t in used if cost.default_priced(prices, t)})
    if missing:
        r.problem("aws:region", f"the default price table covers {cost.DEFAULT_PRICE_REGION} only, and {region} prices "
                                f"differ: add {region}'s on-demand price for each of {', '.join(missing)} under "
                                f"tensile:prices (usdPerHour, asOf, source: https://aws.amazon.com/ec2/pricing/on-demand/), "
                                f"or deploy in {cost.DEFAULT_PRICE_REGION}")
