"""Where the simulator's figures come from: step time per node count from a throughput model or
a run's ledger, and Tensile's time costs (start-up, recovery, checkpoint stall, time to durable)
measured in a run's ledger (`tensile simulate --costs RUN`)."""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from tensile.simulate.api import SimulationError, TimeCosts

GPU_PEAK_BF16_TFLOPS: dict[str, float] = {
    "a10g": 70.0, "l4": 121.0, "l40s": 362.0, "a100": 312.0, "h100": 989.0, "h200": 989.0,
}
"""Dense bf16 peak per GPU (NVIDIA datasheets: A10G, L4, L40S, A100 SXM, H100/H200 SXM; no sparsity)."""
DEFAULT_MFU = 0.4
"""Assumption: model FLOPs utilisation of a well-tuned dense transformer on one node."""
INTER_NODE_GB_PER_S: dict[str, float] = {"h100": 400.0, "h200": 400.0, "a100": 50.0}
"""EFA bandwidth per node (p5: 3200 Gbps, p4d: 400 Gbps); other pools use this default:"""
DEFAULT_INTER_NODE_GB_PER_S = 12.5
"""100 Gbps Ethernet, the g6e.48xlarge's / g5.48xlarge's network (no EFA)."""


def modelled_step_s(*, parameters: int, tokens_per_step: int, gpu_model: str, gpus_per_node: int,
                    nodes: int, mfu: float = DEFAULT_MFU, gradient_bytes_per_parameter: int = 2) -> float:
    """6·N FLOPs per token over the nodes' GPUs at `mfu`, plus a ring all-reduce of the gradients
    between nodes (2·(n-1)/n of their bytes over the inter-node bandwidth; NVLink inside a node
    is taken as free). A model, not a measurement: `--costs RUN` replaces it with measured times."""
    peak = GPU_PEAK_BF16_TFLOPS.get(gpu_model)
    if peak is None:
        raise SimulationError(f"no peak FLOPs for GPU {gpu_model!r}: known {', '.join(sorted(GPU_PEAK_BF16_TFLOPS))}")
    compute_s = 6 * parameters * tokens_per_step / (nodes * gpus_per_node * peak * 1e12 * mfu)
    bandwidth = INTER_NODE_GB_PER_S.get(gpu_model, DEFAULT_INTER_NODE_GB_PER_S) * 1e9
    all_reduce_s = 2 * (nodes - 1) / nodes * parameters * gradient_bytes_per_parameter / bandwidth
    return compute_s + all_reduce_s


def step_intervals(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Each step event with the wall time it took: from the step before it in the same round (so
    the loop's own overhead, the ledger write and the data are in it, as they are in a run's
    wall time), or its measured `step_s` for a round's first step."""
    intervals, previous = [], None
    for event in events:
        if event["event"] == "round-start":
            previous = None
        elif event["event"] == "step":
            seconds = event["t"] - previous["t"] if previous is not None else float(event.get("step_s") or 0.0)
            intervals.append((event, seconds))
            previous = event
    return intervals


def step_s_by_nodes_from_ledger(events: list[dict[str, Any]], processes_per_node: int) -> dict[int, float]:
    """Mean wall time per step at each node count the run trained at: the mean, not the median,
    because a run's wall time is the sum of its steps, and step times are skewed (a slow step
    now and then: a save's host copy, the data, a busy machine)."""
    durations: dict[int, list[float]] = {}
    for event, seconds in step_intervals(events):
        durations.setdefault(event["world_size"] // processes_per_node, []).append(seconds)
    return {nodes: statistics.fmean(values) for nodes, values in durations.items()}


def measured_goodput(events: list[dict[str, Any]]) -> tuple[float, float]:
    """(useful seconds, wall seconds) of a finished run: the wall time of the steps it kept (the
    last time each step was done), and the first step's start to the `completed` event."""
    kept: dict[int, float] = {}
    for event, seconds in step_intervals(events):
        kept[event["step"]] = seconds
    steps = [e for e in events if e["event"] == "step"]
    completed = [e for e in events if e["event"] == "completed"]
    if not steps or not completed:
        raise SimulationError("the ledger has no finished run (no step, or no completed event)")
    start = steps[0]["t"] - float(steps[0].get("step_s") or 0.0)
    return sum(kept.values()), completed[-1]["t"] - start


def _median(values: list[float], fallback: float) -> float:
    return statistics.median(values) if values else fallback


def round_gaps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each re-formation: the world size before and after, the last step before it and the first
    step after it (times), and the stop checkpoint (an agreed stop) between them, if any."""
    gaps: list[dict[str, Any]] = []
    last_step: dict[str, Any] | None = None
    stop_save_s: float | None = None
    pending: dict[str, Any] | None = None
    for event in events:
        kind = event["event"]
        if kind == "checkpoint" and event.get("reason") == "stop":
            stop_save_s = float(event.get("stall_s") or 0.0)
        elif kind == "round-start" and last_step is not None and pending is None:
            pending = {"before": last_step["world_size"], "after": event["world_size"], "last_step_t": last_step["t"],
                       "stop_saved": stop_save_s is not None, "stop_save_s": stop_save_s or 0.0}
        elif kind == "step":
            if pending is not None:
                gaps.append({**pending, "first_step_t": event["t"], "first_step_s": float(event.get("step_s") or 0.0)})
                pending = None
            last_step, stop_save_s = event, None
    return gaps


def costs_from_ledger(events: list[dict[str, Any]], *, base: TimeCosts = TimeCosts(),
                      source: str = "a run's ledger") -> TimeCosts:
    """The base costs with every figure the ledger measures replaced by its median: periodic
    stall, time to durable, stop-save time, and recovery per kind of re-formation (a smaller group
    after an agreed stop: warned; without one: unwarned; a larger group: a join). Recovery is
    the last step before the re-formation to the first step after, less that step's own time
    and any stop save (counted as checkpoint time). The cloud start-up (launch, image pull) is
    not in a ledger and stays the base's."""
    periodic = [e for e in events if e["event"] == "checkpoint" and e.get("reason") == "periodic"]
    stops = [e for e in events if e["event"] == "checkpoint" and e.get("reason") in ("stop", "final")]
    durable = [float(e.get("durable_s") or e.get("persist_s")) for e in periodic
               if e.get("durable_s") or e.get("persist_s")]
    recoveries: dict[str, list[float]] = {"warned": [], "unwarned": [], "join": []}
    for gap in round_gaps(events):
        if "first_step_t" not in gap or gap["before"] is None:
            continue
        seconds = gap["first_step_t"] - gap["last_step_t"] - gap["first_step_s"] - gap["stop_save_s"]
        kind = "join" if gap["after"] > gap["before"] else "warned" if gap["stop_saved"] else "unwarned"
        if gap["after"] != gap["before"]:
            recoveries[kind].append(max(0.0, seconds))
    rounds = [e for e in events if e["event"] == "round-start"]
    first_step = next((e for e in events if e["event"] == "step"), None)
    start = (first_step["t"] - float(first_step.get("step_s") or 0.0) - rounds[0]["t"]) if rounds and first_step else None
    return replace(
        base,
        checkpoint_stall_s=_median([float(e.get("stall_s") or 0.0) for e in periodic], base.checkpoint_stall_s),
        time_to_durable_s=_median(durable, base.time_to_durable_s),
        emergency_save_s=_median([float(e.get("stall_s") or 0.0) for e in stops], base.emergency_save_s),
        recovery_unwarned_s=_median(recoveries["unwarned"], base.recovery_unwarned_s),
        recovery_warned_s=_median(recoveries["warned"], base.recovery_warned_s),
        recovery_join_s=_median(recoveries["join"], base.recovery_join_s),
        tensile_start_s=max(0.0, start) if start is not None else base.tensile_start_s,
        source=source)
