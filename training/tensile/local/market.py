"""A simulated spot capacity market for one NodePool: offers appear and vanish, prices move.

From a seeded generator, or from a measured availability trace (SkyPilot's spot-traces format, read
by `tensile.scaler.traces`, which the simulator shares), played back on a faster clock.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tensile.scaler import PoolMarket
from tensile.scaler.traces import read_trace


@dataclass(frozen=True, kw_only=True, slots=True)
class MarketTick:
    at_s: float
    """Seconds since the scenario began."""
    spot_usd_per_hour: float | None
    spot_nodes_available: int | None
    reserved_nodes_free: int = 0


class SimulatedMarket:
    """The pool's market at any moment: the newest tick at or before it."""

    def __init__(self, pool: str, on_demand_usd_per_hour: float, ticks: Sequence[MarketTick]):
        if not ticks:
            raise ValueError("a market needs at least one tick")
        self.pool = pool
        self.on_demand_usd_per_hour = on_demand_usd_per_hour
        self.ticks = sorted(ticks, key=lambda tick: tick.at_s)
        self._starts = [tick.at_s for tick in self.ticks]

    def at(self, elapsed_s: float) -> PoolMarket:
        tick = self.ticks[max(0, bisect.bisect_right(self._starts, elapsed_s) - 1)]
        return PoolMarket(pool=self.pool, on_demand_usd_per_hour=self.on_demand_usd_per_hour,
                          spot_usd_per_hour=tick.spot_usd_per_hour, spot_nodes_available=tick.spot_nodes_available,
                          reserved_nodes_free=tick.reserved_nodes_free)

    @classmethod
    def generated(cls, *, seed: int, pool: str, on_demand_usd_per_hour: float, spot_usd_per_hour: float,
                  duration_s: float, tick_s: float, max_offers: int, change_probability: float = 0.3,
                  price_volatility: float = 0.05, spike_probability: float = 0.02,
                  spike_factor: float = 3.0) -> "SimulatedMarket":
        """A seeded random walk: each tick the offer count may move by one (appear/vanish), the
        price drifts by up to `price_volatility` and sometimes spikes; never above on-demand x 2."""
        rng = random.Random(seed)
        offers, price, ticks, at = 0, spot_usd_per_hour, [], 0.0
        while at <= duration_s:
            if rng.random() < change_probability:
                offers = min(max_offers, max(0, offers + rng.choice((-1, 1))))
            price *= 1 + rng.uniform(-price_volatility, price_volatility)
            spiked = price * spike_factor if rng.random() < spike_probability else price
            ticks.append(MarketTick(at_s=at, spot_usd_per_hour=round(min(spiked, 2 * on_demand_usd_per_hour), 4),
                                    spot_nodes_available=offers))
            at += tick_s
        return cls(pool, on_demand_usd_per_hour, ticks)

    @classmethod
    def from_availability_trace(cls, path: Path, *, pool: str, on_demand_usd_per_hour: float,
                                spot_usd_per_hour: float, seconds_per_gap: float) -> "SimulatedMarket":
        """A measured availability trace (spot nodes obtainable per sample), one sample every
        `seconds_per_gap` of scenario time instead of the trace's own gap; the price is fixed
        (those traces record availability, not price)."""
        counts = read_trace(path).nodes_available
        return cls(pool, on_demand_usd_per_hour, [
            MarketTick(at_s=index * seconds_per_gap, spot_usd_per_hour=spot_usd_per_hour,
                       spot_nodes_available=count) for index, count in enumerate(counts)])
