"""Spot availability traces: SkyPilot's spot-traces format read once, and a seeded generator for
traces of an AWS Spot Instance Advisor interruption band, so the market stand-ins run without the data set.

The format (`../shared/traces/skypilot-spot-traces/README.md`): `{"metadata": {"gap_seconds": N},
"data": [count, ...]}`, one count of spot instances obtainable per tick of N seconds.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

HOURS_PER_MONTH = 730.0
"""A month as AWS prices and counts it (8,760 h / 12): the advisor's bands are per month."""

INTERRUPTION_BANDS: dict[str, tuple[float, float]] = {
    "<5%": (0.0, 0.05), "5-10%": (0.05, 0.10), "10-15%": (0.10, 0.15), "15-20%": (0.15, 0.20), ">20%": (0.20, 0.30),
}
"""The Spot Instance Advisor's frequency-of-interruption bands: the share of a type's spot
instances AWS reclaimed over the trailing month. The advisor's last band is open (>20%); 30% is
this generator's upper edge for it, an assumption."""


class TraceError(ValueError):
    """A trace file that is not in the spot-traces format, or a generator asked for nonsense."""


@dataclass(frozen=True, slots=True)
class SpotTrace:
    """Spot nodes obtainable per tick; the trace repeats past its end (a run may outlast it)."""

    tick_s: float
    nodes_available: tuple[int, ...]
    source: str
    """Where it came from: a path, or the generator's band and seed."""

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or not self.nodes_available or min(self.nodes_available) < 0:
            raise TraceError(f"{self.source}: a trace needs tick_s > 0 and at least one count >= 0")

    @property
    def duration_s(self) -> float:
        return self.tick_s * len(self.nodes_available)

    def available_at(self, at_s: float) -> int:
        return self.nodes_available[int(at_s // self.tick_s) % len(self.nodes_available)]

    def next_change_s(self, at_s: float) -> float:
        """The start of the first tick after `at_s` whose count differs from the count at `at_s`."""
        counts = self.nodes_available
        index = int(at_s // self.tick_s)
        current = counts[index % len(counts)]
        for ahead in range(1, len(counts) + 1):
            if counts[(index + ahead) % len(counts)] != current:
                return (index + ahead) * self.tick_s
        return at_s + self.duration_s  # constant: nothing changes; look again a whole trace later

    def to_json(self) -> dict:
        """The spot-traces format itself: what `read_trace` reads back."""
        return {"metadata": {"gap_seconds": self.tick_s}, "data": list(self.nodes_available)}


def read_trace(path: str | Path) -> SpotTrace:
    """A trace file in the spot-traces format. Its counts are read as the README defines them, the
    instances obtainable at each tick (docs/design/simulate.md says what that assumes)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        tick_s = float(document["metadata"]["gap_seconds"])
        counts = tuple(int(count) for count in document["data"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TraceError(f"{path}: not a spot-traces file ({{'metadata': {{'gap_seconds': N}}, 'data': [...]}}): {e}") from e
    return SpotTrace(tick_s, counts, str(path))


def band_rate(band: str) -> float:
    """The band's middle, as a monthly interruption probability of one held instance."""
    if band not in INTERRUPTION_BANDS:
        raise TraceError(f"unknown interruption band {band!r}: one of {', '.join(INTERRUPTION_BANDS)}")
    low, high = INTERRUPTION_BANDS[band]
    return (low + high) / 2


def generate_trace(band: str, *, seed: int, nodes: int, duration_s: float, tick_s: float = 300.0,
                   mean_outage_s: float = 3600.0) -> SpotTrace:
    """`nodes` independent capacity slots, each held until reclaimed (exponential, at the rate that
    reclaims the band's middle share of instances held for a month) and then gone for an
    exponential outage of mean `mean_outage_s`; counted at every tick."""
    if nodes < 1 or duration_s < tick_s or tick_s <= 0 or mean_outage_s <= 0:
        raise TraceError(f"need nodes >= 1, duration_s >= tick_s > 0 and mean_outage_s > 0; got {nodes}, "
                         f"{duration_s}, {tick_s}, {mean_outage_s}")
    rate_per_s = -math.log(1 - band_rate(band)) / (HOURS_PER_MONTH * 3600)
    rng = random.Random(seed)
    ticks = int(duration_s // tick_s)
    counts = [0] * ticks
    for _ in range(nodes):
        at, up = 0.0, True
        while at < ticks * tick_s:
            length = rng.expovariate(rate_per_s) if up else rng.expovariate(1 / mean_outage_s)
            if up:
                for tick in range(math.ceil(at / tick_s), min(ticks, math.ceil((at + length) / tick_s))):
                    counts[tick] += 1
            at, up = at + length, not up
    return SpotTrace(tick_s, tuple(counts), f"generated: band {band}, seed {seed}, {nodes} node(s)")


def interruptions(trace: SpotTrace) -> tuple[int, float]:
    """(instances reclaimed, instance-months held) over the trace: a drop of the count by k is k
    reclaimed instances. Their ratio estimates the monthly interruption rate."""
    counts = trace.nodes_available
    reclaimed = sum(max(0, before - after) for before, after in zip(counts, counts[1:]))
    held_months = sum(counts) * trace.tick_s / 3600 / HOURS_PER_MONTH
    return reclaimed, held_months
