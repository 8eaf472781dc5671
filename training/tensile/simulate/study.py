"""A study of one job over K seeds: the distribution of completion time, cost, goodput and steps
replayed; the same job all on-demand and on spot without fallback; and the checkpoint interval
that minimises cost, against the Young/Daly interval sqrt(2·δ·MTBF)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tensile.scaler.traces import SpotTrace, generate_trace
from tensile.simulate.api import SimJob, SimPool, SimResult, TimeCosts
from tensile.simulate.engine import simulate
from tensile.simulate.scaling import ScalerInputs

GENERATED_TRACE_DAYS = 60
"""A generated trace's length; the simulator repeats a trace past its end."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceSource:
    """A measured trace (each seed starts it at another offset) or an interruption band (each seed
    generates its own trace)."""
    trace: SpotTrace | None = None
    band: str | None = None
    nodes: int = 1

    def for_seed(self, seed: int) -> tuple[SpotTrace, float]:
        if self.trace is not None:
            return self.trace, random.Random(seed).uniform(0, self.trace.duration_s)
        return generate_trace(self.band, seed=seed, nodes=self.nodes, duration_s=GENERATED_TRACE_DAYS * 86400), 0.0

    @property
    def description(self) -> str:
        return self.trace.source if self.trace is not None else f"generated, interruption band {self.band} per month"


@dataclass(frozen=True, kw_only=True, slots=True)
class Distribution:
    median: float
    p90: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Distribution":
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
        return cls(median=statistics.median(ordered), p90=p90)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScenarioSummary:
    name: str
    runs: int
    completed: int
    completion_h: Distribution
    cost_usd: Distribution
    goodput: Distribution
    steps_replayed: Distribution
    losses: Distribution
    on_demand_share: float
    """Share of the node-hours bought on-demand (median run)."""

    @classmethod
    def of(cls, name: str, results: Sequence[SimResult]) -> "ScenarioSummary":
        hours = [r.on_demand_node_hours / max(1e-9, r.on_demand_node_hours + r.spot_node_hours + r.reserved_node_hours)
                 for r in results]
        return cls(name=name, runs=len(results), completed=sum(r.completed for r in results),
                   completion_h=Distribution.of([r.completion_s / 3600 for r in results]),
                   cost_usd=Distribution.of([r.cost_usd for r in results]),
                   goodput=Distribution.of([r.goodput for r in results]),
                   steps_replayed=Distribution.of([r.steps_replayed for r in results]),
                   losses=Distribution.of([len(r.losses) for r in results]),
                   on_demand_share=statistics.median(hours))


@dataclass(frozen=True, kw_only=True, slots=True)
class IntervalStudy:
    best_every_steps: int
    best_cost_usd: float
    young_daly_every_steps: int | None
    """None when the runs saw no unwarned loss (no MTBF: the interval may be as long as the run)."""
    young_daly_cost_usd: float | None
    configured_every_steps: int
    configured_cost_usd: float
    mtbf_h: float | None
    checkpoint_cost_s: float
    costs_by_interval: tuple[tuple[int, float], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Study:
    spot: ScenarioSummary
    on_demand: ScenarioSummary
    spot_no_fallback: ScenarioSummary
    interval: IntervalStudy
    trace: str
    seeds: int
    unwarned_fraction: float
    decisions: tuple[str, ...] = ()
    """The scaler's decisions in the first seed's run (when it drove the job)."""


def _runs(job: SimJob, pool: SimPool, costs: TimeCosts, source: TraceSource, seeds: Sequence[int],
          unwarned_fraction: float, scaler: ScalerInputs | None) -> list[SimResult]:
    results = []
    for seed in seeds:
        trace, offset = source.for_seed(seed)
        results.append(simulate(job, pool, costs, trace=trace, trace_offset_s=offset,
                                unwarned_fraction=unwarned_fraction, seed=seed, scaler=scaler))
    return results


def interval_candidates(job: SimJob, extra: Sequence[int] = ()) -> list[int]:
    """A geometric grid of checkpoint intervals from ~steps/2000 to steps/2, with `extra` added."""
    low, high = max(1, job.steps // 2000), max(1, job.steps // 2)
    grid = {max(1, round(low * (high / low) ** (i / 11))) for i in range(12)} if high > low else {low}
    return sorted(grid | {e for e in extra if e >= 1})


def young_daly_steps(*, checkpoint_cost_s: float, mtbf_s: float, step_s: float) -> int:
    """Young/Daly's first-order optimum sqrt(2·δ·MTBF), in steps of `step_s`."""
    return max(1, round(math.sqrt(2 * checkpoint_cost_s * mtbf_s) / step_s))


def study(job: SimJob, pool: SimPool, costs: TimeCosts, source: TraceSource, *, seeds: int,
          unwarned_fraction: float, scaler: ScalerInputs | None = None,
          progress: Callable[[str], None] = lambda _: None) -> Study:
    seed_list = list(range(seeds))
    spot = _runs(job, pool, costs, source, seed_list, unwarned_fraction, scaler)
    on_demand = _runs(job, dataclasses.replace(pool, spot=False, reserved_nodes=0), costs, source, seed_list,
                      unwarned_fraction, scaler)
    no_fallback = _runs(job, dataclasses.replace(pool, fallback_to_on_demand=False), costs, source, seed_list,
                        unwarned_fraction, scaler)
    progress("scenarios done; sweeping the checkpoint interval")
    unwarned = sum(r.unwarned_losses for r in spot)
    mtbf_s = sum(r.completion_s for r in spot) / unwarned if unwarned else None
    # δ: what one periodic checkpoint costs the loop (its stall); at most one save is in flight,
    # so an interval shorter than the time to durable also waits for the one before.
    delta = max(costs.checkpoint_stall_s, 1e-6)
    young_daly = (young_daly_steps(checkpoint_cost_s=delta, mtbf_s=mtbf_s, step_s=job.step_s_by_nodes[job.max_nodes])
                  if mtbf_s else None)
    candidates = interval_candidates(job, [job.checkpoint_every_steps] + ([young_daly] if young_daly else []))
    median_cost = {}
    for every in candidates:
        runs = spot if every == job.checkpoint_every_steps else _runs(
            dataclasses.replace(job, checkpoint_every_steps=every), pool, costs, source, seed_list,
            unwarned_fraction, scaler)
        median_cost[every] = statistics.median(r.cost_usd for r in runs)
    best = min(median_cost, key=lambda every: (median_cost[every], every))
    interval = IntervalStudy(
        best_every_steps=best, best_cost_usd=median_cost[best], young_daly_every_steps=young_daly,
        young_daly_cost_usd=median_cost.get(young_daly) if young_daly else None,
        configured_every_steps=job.checkpoint_every_steps, configured_cost_usd=median_cost[job.checkpoint_every_steps],
        mtbf_h=mtbf_s / 3600 if mtbf_s else None, checkpoint_cost_s=delta,
        costs_by_interval=tuple(sorted(median_cost.items())))
    return Study(spot=ScenarioSummary.of("spot, on-demand fallback", spot),
                 on_demand=ScenarioSummary.of("all on-demand", on_demand),
                 spot_no_fallback=ScenarioSummary.of("spot, no fallback", no_fallback),
                 interval=interval, trace=source.description, seeds=seeds, unwarned_fraction=unwarned_fraction,
                 decisions=spot[0].decisions if spot else ())
