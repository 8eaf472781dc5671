"""The worst-case monthly cost of a stack's autoscaling config with the overrun Karpenter's
NodePool limits allow during a fast scale-out, priced by the one cost model (infra/cost.py).

Basis: Karpenter's docs say NodePool limits are checked eventually consistently and can be
exceeded during rapid scale-out. A provisioning batch is checked against the NodePool's usage as
counted so far; the nodes a batch launches count only once their NodeClaims report capacity.
So while the first batch's launches are not counted yet, each further batch in that time sees
the old usage and may launch up to another batch. The overrun per pool: (batches closed before
the first launch counts, less the first) x (nodes one batch may launch, at most the pool's node
limit) x (GPUs per node, the widest type), but never more than the pending demand past the limit
can ask for: the GPUs Kueue may admit on the pool (quota + borrowing of every team allowed its
GPU model) less the limit. Priced on-demand at the dearest GPU-hour the pool may buy, for a
whole month: the overrun is transient, so this is a ceiling, not a forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra import cost
from infra.config.checks import cost_estimate
from infra.config.types import StackConfig

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
    admissible_gpus: int
    """What Kueue may admit on the pool: the demand that can be pending past the limit."""
    batch_nodes: int
    node_gpus: int
    usd_per_gpu_hour: float

    @property
    def monthly_usd(self) -> float:
        return self.overrun_gpus * self.usd_per_gpu_hour * cost.HOURS_PER_MONTH


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
    def within_budget(self) -> bool:
        return self.with_overrun_monthly_usd <= self.budget_monthly_usd


def worst_case(cfg: StackConfig, *, batch_nodes: dict[str, int], launch_to_counted_s: float = LAUNCH_TO_COUNTED_S,
               batch_max_s: float = KARPENTER_BATCH_MAX_S) -> AutoscalingWorstCase:
    """`batch_nodes`: per pool, the most nodes one provisioning batch may ask for (the widest
    job's max nodes, or the pool's own node limit where larger jobs are unknown)."""
    estimate = cost_estimate(pools=cfg.gpu_pools, cluster=cfg.cluster, network=cfg.network, prices=cfg.prices)
    batches = max(1, math.ceil(launch_to_counted_s / batch_max_s))
    pools = []
    for pool in cfg.gpu_pools:
        node_gpus = max(cost.lookup(t).gpus for t in pool.instance_types)
        limit_nodes = max(1, pool.max_gpus // node_gpus)
        nodes = min(batch_nodes.get(pool.name, limit_nodes), limit_nodes)
        admissible = sum(t.gpu_quota + t.borrowing_limit for t in cfg.teams if pool.gpu_model in t.gpu_models)
        overrun = min((batches - 1) * nodes * node_gpus, max(0, admissible - pool.max_gpus))
        pools.append(PoolOverrun(pool=pool.name, limit_gpus=pool.max_gpus, overrun_gpus=overrun,
                                 admissible_gpus=admissible, batch_nodes=nodes, node_gpus=node_gpus,
                                 usd_per_gpu_hour=cost.worst_per_gpu_hour(pool.instance_types, cfg.prices)))
    return AutoscalingWorstCase(
        at_limits_monthly_usd=estimate.worst_case_monthly, pools=tuple(pools),
        budget_monthly_usd=cfg.budget.monthly_usd, batches_uncounted=batches,
        basis=(f"Karpenter's docs: NodePool limits are checked eventually consistently and can be exceeded during "
               f"rapid scale-out. Modelled: a launch counts {launch_to_counted_s:.0f} s after it is made (assumed), "
               f"a batch closes within {batch_max_s:.0f} s (BATCH_MAX_DURATION), so {batches - 1} more batch(es) may "
               f"launch past the limit before the first counts, bounded by what Kueue admits on the pool"))
