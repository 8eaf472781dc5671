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


@dataclass(frozen=True, kw_only=True, slots=True)
class MarketPhase:
    """One stretch of a scripted market, until the job has made the progress that ends it."""
    name: str
    """Printed when the phase begins."""
    spot_usd_per_hour: float
    spot_capacity: int
    """Spot nodes the pool holds in all, the job's included: the job is offered what it does not
    hold, and when it holds more (capacity vanished) the cloud reclaims the difference."""
    ends_after_steps: tuple[int, int] | None = None
    """(nodes, steps): ends once the job has trained this many steps at that node count in it."""
    ends_after_s: float | None = None
    """Or ends this many seconds after it began (for a phase in which the job cannot train)."""

    def __post_init__(self) -> None:
        if self.spot_usd_per_hour <= 0 or self.spot_capacity < 0:
            raise ValueError(f"phase {self.name!r}: need a price > 0 and a capacity >= 0")


class ProgressMarket:
    """A scripted spot pool whose phases follow the run's progress (steps in the ledger), not the
    wall clock, so a scenario tells the same story on a busy machine as on an idle one. Within a
    phase the price jitters by a seeded amount per step (the same run, the same prices)."""

    def __init__(self, pool: str, on_demand_usd_per_hour: float, phases: Sequence[MarketPhase], *,
                 seed: int, processes_per_node: int = 1, price_jitter_fraction: float = 0.03):
        if not phases:
            raise ValueError("a scripted market needs at least one phase")
        self.pool, self.on_demand_usd_per_hour = pool, on_demand_usd_per_hour
        self.phases, self.seed = list(phases), seed
        self.processes_per_node, self.price_jitter_fraction = processes_per_node, price_jitter_fraction
        self.index = 0
        self.began_at: float | None = None

    @property
    def phase(self) -> MarketPhase:
        return self.phases[self.index]

    def advance(self, events: Sequence[dict], now: float) -> MarketPhase | None:
        """Moves to the next phase if the current one's progress is made; returns it if so."""
        if self.began_at is None:
            self.began_at = now
            return self.phase
        if self.index + 1 >= len(self.phases) or not self._ended(events, now):
            return None
        self.index += 1
        self.began_at = now
        return self.phase

    def _ended(self, events: Sequence[dict], now: float) -> bool:
        phase = self.phase
        if phase.ends_after_s is not None and now - self.began_at >= phase.ends_after_s:
            return True
        if phase.ends_after_steps is not None:
            nodes, count = phase.ends_after_steps
            done = sum(1 for e in events if e["event"] == "step" and e["t"] >= self.began_at
                       and e["world_size"] == nodes * self.processes_per_node)
            return done >= count
        return False

    def at(self, *, held_nodes: int, step: int) -> PoolMarket:
        """The pool as the job sees it: a seeded price, and the spot nodes it does not hold."""
        phase = self.phase
        jitter = random.Random(f"{self.seed}:{self.index}:{step}").uniform(-1, 1) * self.price_jitter_fraction
        return PoolMarket(pool=self.pool, on_demand_usd_per_hour=self.on_demand_usd_per_hour,
                          spot_usd_per_hour=round(phase.spot_usd_per_hour * (1 + jitter), 4),
                          spot_nodes_available=max(0, phase.spot_capacity - held_nodes))

    def to_reclaim(self, held_nodes: int) -> int:
        """How many of the job's spot nodes the cloud takes back now."""
        return max(0, held_nodes - self.phase.spot_capacity)
