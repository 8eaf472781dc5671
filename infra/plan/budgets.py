"""Budget planning as pure functions of the config: one notification per threshold, and the
price per GPU-hour the spend meter charges each model."""

from __future__ import annotations

from typing import Iterable

from infra import cost
from infra.config.types import GpuPoolConfig


def budget_notifications(actual: Iterable[float], forecast: Iterable[float]) -> list[dict]:
    """One notification per threshold: ACTUAL ones say money is spent, FORECASTED ones warn early."""
    out = []
    for kind, thresholds in (("ACTUAL", actual), ("FORECASTED", forecast)):
        for threshold in thresholds:
            out.append({"notification_type": kind, "threshold": float(threshold),
                        "threshold_type": "PERCENTAGE", "comparison_operator": "GREATER_THAN"})
    return out


def team_gpu_hour_prices(pools: Iterable[GpuPoolConfig], prices: cost.PriceBook) -> dict[str, float]:
    """What the spend meter charges per admitted GPU-hour of each model: the dearest on-demand
    GPU-hour among that model's pools, so metered spend never undercounts."""
    by_model: dict[str, float] = {}
    for pool in pools:
        price = cost.worst_per_gpu_hour(pool.instance_types, prices)
        by_model[pool.gpu_model] = max(price, by_model.get(pool.gpu_model, 0.0))
    return by_model
