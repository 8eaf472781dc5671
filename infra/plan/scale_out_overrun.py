"""The worst-case monthly cost of a stack's autoscaling config with the overrun Karpenter's
NodePool limits allow during a fast scale-out, priced by the one cost model (infra/cost.py).

Basis: Karpenter's docs say NodePool limits are checked eventually consistently and can be
exceeded during rapid scale-out. A provisioning batch is checked against the NodePool's usage as
counted so far; the nodes a batch launches count only once their NodeClaims report capacity.
So while the first batch's launches are not counted yet, each further batch in that time sees
the old usage and may launch up to another batch. The overrun per pool: (batches closed before
the first launch counts, less the first) x (nodes one batch may launch, at most the pool's node
limit) x (GPUs per node, the widest type). Two bounds are given: Karpenter's alone (pods that
reach the pool without Kueue), and with Kueue's admission, which never lets more GPUs be pending
on a GPU model than the teams' per-flavor quotas (nominal + borrowing, plan/teams.py), so the
overrun is at most those quotas less the pool's limit. Priced on-demand at the dearest GPU-hour
the pool may buy, for a whole month: the overrun is transient, so this is a ceiling, not a forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra import cost
from infra.config.checks import cost_estimate
from infra.config.types import StackConfig
from infra.plan import teams as team_plan

KARPENTER_BATCH_MAX_S = 10.0
"""Karpenter's BATCH_MAX_DURATION default: the longest a provisioning batch collects pending pods."""
LAUNCH_TO_COUNTED_S = 30.0
"""Assumption: a NodeClaim's creation to its capacity counting against the NodePool (EC2
CreateFleet returning the instance, the NodeClaim's status written, the NodePool's usage
re-summed). Not measured here (no account)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolOverrun:
    pool: str
    limit_gpus: int
    overrun_gpus: int
    """With Kueue's admission bound."""
    karpenter_only_overrun_gpus: int
    """Karpenter's bound alone: pods reaching the pool without Kueue."""
    admissible_gpus: int
    """What Kueue may admit on the pool's GPU model: the most demand that can be pending."""
    batch_nodes: int
    node_gpus: int
    usd_per_gpu_hour: float

    @property
    def monthly_usd(self) -> float:
        return self.overrun_gpus * self.usd_per_gpu_hour * cost.HOURS_PER_MONTH

    @property
    def karpenter_only_monthly_usd(self) -> float:
        return self.karpenter_only_overrun_gpus * self.usd_per_gpu_hour * cost.HOURS_PER_MONTH


@dataclass(frozen=True, kw_only=True, slots=True)
class AutoscalingWorstCase:
    at_limits_monthly_usd: float
    """Every pool at its GPU limit, on-demand at the dearest size (cost.estimate's hard ceiling)."""
    pools: tuple[PoolOverrun, ...]
    budget_monthly_usd: float
    batches_uncounted: int
    basis: str

    @property
    def overrun_monthly_usd(self) -> float:
        return sum(p.monthly_usd for p in self.pools)

    @property
    def with_overrun_monthly_usd(self) -> float:
        return self.at_limits_monthly_usd + self.overrun_monthly_usd

    @property
    def karpenter_only_monthly_usd(self) -> float:
        return self.at_limits_monthly_usd + sum(p.karpenter_only_monthly_usd for p in self.pools)

    @property
    def within_budget(self) -> bool:
        return self.with_overrun_monthly_usd <= self.budget_monthly_usd


def worst_case(cfg: StackConfig, *, batch_nodes: dict[str, int], launch_to_counted_s: float = LAUNCH_TO_COUNTED_S,
               batch_max_s: float = KARPENTER_BATCH_MAX_S) -> AutoscalingWorstCase:
    """`batch_nodes`: per pool, the most nodes one provisioning batch may ask for (the widest
    job's max nodes, or the pool's own node limit where larger jobs are unknown)."""
    estimate = cost_estimate(pools=cfg.gpu_pools, cluster=cfg.cluster, network=cfg.network, prices=cfg.prices)
    batches = max(1, math.ceil(launch_to_counted_s / batch_max_s))
    quotas = [flavor for team in cfg.teams for flavor in team_plan.team_quota(team, cfg.gpu_pools, cfg.prices).flavors]
    pools = []
    for pool in cfg.gpu_pools:
        node_gpus = max(cost.lookup(t).gpus for t in pool.instance_types)
        limit_nodes = max(1, pool.max_gpus // node_gpus)
        nodes = min(batch_nodes.get(pool.name, limit_nodes), limit_nodes)
        admissible = sum(f.nominal_gpus + f.borrowing_gpus for f in quotas if f.flavor == pool.gpu_model)
        karpenter_only = (batches - 1) * nodes * node_gpus
        pools.append(PoolOverrun(pool=pool.name, limit_gpus=pool.max_gpus, karpenter_only_overrun_gpus=karpenter_only,
                                 overrun_gpus=min(karpenter_only, max(0, admissible - pool.max_gpus)),
                                 admissible_gpus=admissible, batch_nodes=nodes, node_gpus=node_gpus,
                                 usd_per_gpu_hour=cost.worst_per_gpu_hour(pool.instance_types, cfg.prices)))
    return AutoscalingWorstCase(
        at_limits_monthly_usd=estimate.worst_case_monthly, pools=tuple(pools),
        budget_monthly_usd=cfg.budget.monthly_usd, batches_uncounted=batches,
        basis=(f"Karpenter's docs: NodePool limits are checked eventually consistently and can be exceeded during "
               f"rapid scale-out. Modelled: a launch counts {launch_to_counted_s:.0f} s after it is made (assumed), "
               f"a batch closes within {batch_max_s:.0f} s (BATCH_MAX_DURATION), so {batches - 1} more batch(es) may "
               f"launch past the limit before the first counts; Kueue's per-flavor quotas bound what can be pending"))
