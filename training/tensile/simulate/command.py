"""`tensile simulate`: the stack's inputs (from infra, as plain values) turned into a simulated job,
studied over K seeds, printed as text or JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from tensile.config import load_config
from tensile.elastic.ledger import RunLedger
from tensile.scaler import TeamState, load_scaler_config
from tensile.scaler.traces import read_trace
from tensile.simulate.api import SimJob, SimPool, TimeCosts
from tensile.simulate.costs import costs_from_ledger, modelled_step_s, step_s_by_nodes_from_ledger
from tensile.simulate.scaling import ScalerInputs
from tensile.simulate.study import Study, TraceSource, study

TRACE_ASSUMPTION = ("The spot traces are AWS V100/K80 capacity (SkyPilot's spot-traces, 2022-2023); applying them "
                    "to another GPU family assumes its spot capacity comes and goes the same way.")


def build(inputs: dict[str, Any], *, costs_run: Path | None) -> tuple[SimJob, SimPool, TimeCosts, list[str]]:
    """The job, pool and costs from the stack's inputs; the notes say where each figure came from."""
    job_in, pool_in = inputs["job"], inputs["pool"]
    training = load_config(job_in["training_config"])
    elastic = training.elastic
    processes = job_in["gpus_per_worker"]
    notes: list[str] = []
    base = TimeCosts(emergency_save_s=float(job_in["emergency_checkpoint_seconds"]))
    measured: dict[int, float] = {}
    if costs_run is not None:
        events = RunLedger(costs_run).events()
        costs = costs_from_ledger(events, base=base, source=f"ledger of {costs_run}")
        measured = step_s_by_nodes_from_ledger(events, processes)
        notes.append(f"time costs measured in {costs_run}'s ledger (cloud launch and image pull assumed)")
    else:
        costs = base
        notes.append(f"time costs: {costs.source}; emergency save = the job's emergencyCheckpointSeconds")
    startup = inputs.get("startup") or {}
    if startup:  # the job file's own figures win over defaults and a ledger alike
        costs = dataclasses.replace(costs, **startup)
        notes.append(f"start-up from the job file: {', '.join(f'{k} {v:g} s' for k, v in sorted(startup.items()))}")
    tokens = training.batch.global_batch_size * training.model.seq_len
    step_s, extrapolated, modelled = {}, [], []
    for nodes in range(elastic.min_nodes, elastic.max_nodes + 1):
        if nodes in measured:
            step_s[nodes] = measured[nodes]
        elif measured:  # never mix a measured run with the model: scale the nearest measured count
            nearest = min(measured, key=lambda m: (abs(m - nodes), m))
            step_s[nodes] = measured[nearest] * nearest / nodes
            extrapolated.append(nodes)
        else:
            step_s[nodes] = modelled_step_s(parameters=job_in["model_parameters"], tokens_per_step=tokens,
                                            gpu_model=pool_in["gpu_model"], gpus_per_node=processes, nodes=nodes)
            modelled.append(nodes)
    if measured:
        notes.append(f"step time at {sorted(measured)} node(s) measured in the ledger"
                     + (f"; at {extrapolated} scaled linearly from the nearest measured count" if extrapolated else ""))
    if modelled:
        notes.append(f"step time at {modelled} node(s): throughput model (6·N FLOPs/token at 40% MFU of "
                     f"{pool_in['gpu_model']} bf16 peak + gradient all-reduce between nodes)")
    job = SimJob(name=job_in["name"], steps=training.run.steps, min_nodes=elastic.min_nodes,
                 max_nodes=elastic.max_nodes, processes_per_node=processes,
                 samples_per_step=training.batch.global_batch_size, step_s_by_nodes=step_s,
                 checkpoint_every_steps=training.checkpoint.every_steps)
    pool = SimPool(name=pool_in["name"], gpu_model=pool_in["gpu_model"], instance_type=pool_in["instance_type"],
                   on_demand_usd_per_node_hour=pool_in["on_demand_usd_per_node_hour"],
                   spot_usd_per_node_hour=pool_in["spot_usd_per_node_hour"], spot=pool_in["spot"],
                   node_limit=pool_in["node_limit"])
    if pool.node_limit < job.max_nodes:
        notes.append(f"pool {pool.name}'s GPU limit allows {pool.node_limit} node(s) of {pool.instance_type}, "
                     f"fewer than the job's max {job.max_nodes}: Karpenter launches no more")
    if pool_in["reserved"]:
        notes.append(f"pool {pool.name} has a capacity reservation; its free nodes are not in the stack, so none "
                     "are counted on (all its nodes come from spot or on-demand)")
    return job, pool, costs, notes


def scaler_inputs(inputs: dict[str, Any]) -> ScalerInputs | None:
    if inputs.get("scaler") is None:
        return None
    team = inputs["team"]
    return ScalerInputs(config=load_scaler_config(inputs["scaler"]),
                        team=TeamState(gpu_quota=team["gpu_quota"], borrowing_limit=team["borrowing_limit"],
                                       gpus_in_use=0, spend_usd=0.0, budget_usd=team["monthly_budget_usd"]))


def run(inputs: dict[str, Any], *, trace: Path | None, band: str, seeds: int, unwarned_fraction: float,
        costs_run: Path | None, progress: Callable[[str], None] = lambda _: None) -> tuple[Study, list[str]]:
    job, pool, costs, notes = build(inputs, costs_run=costs_run)
    source = TraceSource(trace=read_trace(trace)) if trace else TraceSource(band=band, nodes=job.max_nodes)
    scaler = scaler_inputs(inputs)
    notes.append("the scaler's policy core decides the size" if scaler else
                 "no scaler section: the job asks for its max nodes throughout")
    return study(job, pool, costs, source, seeds=seeds, unwarned_fraction=unwarned_fraction, scaler=scaler,
                 progress=progress), notes


def to_json(inputs: dict[str, Any], result: Study, notes: list[str]) -> dict[str, Any]:
    return {"stack": inputs["stack"], "job": inputs["job"]["name"], "pool": inputs["pool"],
            "study": dataclasses.asdict(result), "worst_case": inputs["worst_case"],
            "assumptions": [TRACE_ASSUMPTION, *notes]}


def render(inputs: dict[str, Any], result: Study, notes: list[str]) -> str:
    pool, worst = inputs["pool"], inputs["worst_case"]
    lines = [f"tensile simulate: stack {inputs['stack']}, job {inputs['job']['name']} on pool {pool['name']} "
             f"({pool['instance_type']}, ${pool['on_demand_usd_per_node_hour']:.2f}/h on-demand, "
             f"${pool['spot_usd_per_node_hour']:.2f}/h spot)",
             f"trace: {result.trace}; {result.seeds} seeds; {result.unwarned_fraction:.0%} of reclaims unwarned",
             "", f"{'scenario':<26}{'completion h':>16}{'cost $':>20}{'goodput':>14}{'replayed steps':>16}"
             f"{'losses':>10}{'on-demand':>11}",
             f"{'':<26}{'median / p90':>16}{'median / p90':>20}{'median / p90':>14}{'median / p90':>16}"
             f"{'median':>10}{'share':>11}"]
    for s in (result.spot, result.on_demand, result.spot_no_fallback):
        done = "" if s.completed == s.runs else f"  ({s.runs - s.completed} of {s.runs} not done in 180 days)"
        lines.append(f"{s.name:<26}{s.completion_h.median:>8.1f} /{s.completion_h.p90:>6.1f}"
                     f"{s.cost_usd.median:>11,.0f} /{s.cost_usd.p90:>7,.0f}"
                     f"{s.goodput.median:>7.3f} /{s.goodput.p90:>5.3f}"
                     f"{s.steps_replayed.median:>8.0f} /{s.steps_replayed.p90:>6.0f}"
                     f"{s.losses.median:>10.0f}{s.on_demand_share:>10.0%}{done}")
    interval = result.interval
    lines += ["", f"checkpoint interval (median cost over the seeds): configured every {interval.configured_every_steps} "
                  f"steps ${interval.configured_cost_usd:,.0f}; cheapest every {interval.best_every_steps} steps "
                  f"${interval.best_cost_usd:,.0f}"]
    if interval.young_daly_every_steps:
        lines.append(f"  Young/Daly sqrt(2·δ·MTBF) with δ {interval.checkpoint_cost_s:.2f} s, MTBF of unwarned losses "
                     f"{interval.mtbf_h:.1f} h: every {interval.young_daly_every_steps} steps "
                     f"${interval.young_daly_cost_usd:,.0f}")
    else:
        lines.append("  Young/Daly: no unwarned loss in any run, so no MTBF: it would checkpoint as rarely as allowed")
    budget = worst["budget_monthly_usd"]
    verdict = lambda usd: "within" if usd <= budget else "OVER"  # noqa: E731
    lines += ["", f"worst-case monthly cost of the stack's autoscaling config (budget ${budget:,.0f}):",
              f"  at the NodePool limits, all on-demand: ${worst['at_limits_monthly_usd']:,.0f}",
              f"  with Karpenter's scale-out overrun, pending pods bounded by Kueue's quotas: "
              f"${worst['with_overrun_monthly_usd']:,.0f} ({verdict(worst['with_overrun_monthly_usd'])})",
              f"  with the overrun Karpenter's limits alone allow (pods not admitted by Kueue): "
              f"${worst['karpenter_only_monthly_usd']:,.0f} ({verdict(worst['karpenter_only_monthly_usd'])})"]
    for p in worst["pools"]:
        lines.append(f"    {p['pool']}: limit {p['limit_gpus']} GPUs, batches of {p['batch_nodes']} x {p['node_gpus']}-GPU "
                     f"nodes; Kueue admits {p['admissible_gpus']}: overrun {p['overrun_gpus']} GPUs, "
                     f"{p['karpenter_only_overrun_gpus']} without Kueue (${p['karpenter_only_monthly_usd']:,.0f}/month)")
    lines.append(f"  basis: {worst['basis']}")
    if result.decisions:
        lines += ["", "scaler decisions (seed 0):", *[f"  {d}" for d in result.decisions[:12]]]
    lines += ["", "assumptions:", f"  - {TRACE_ASSUMPTION}", f"  - prices: {pool['price_source']}",
              *[f"  - {n}" for n in notes]]
    return "\n".join(lines)


def main(inputs: dict[str, Any], *, trace: Path | None, band: str, seeds: int, unwarned_fraction: float,
         costs_run: Path | None, as_json: bool) -> str:
    result, notes = run(inputs, trace=trace, band=band, seeds=seeds, unwarned_fraction=unwarned_fraction,
                        costs_run=costs_run)
    return json.dumps(to_json(inputs, result, notes), indent=1) if as_json else render(inputs, result, notes)
