"""The scaler's policy core as the simulator sees it: the simulation's state translated into the
core's value types (JobState, TeamState, PoolMarket), as the local and cluster actuators translate
theirs, so the simulated job is sized by the same `tensile.scaler.decide`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tensile.scaler import JobState, PoolMarket, ScalerConfig, TeamState
from tensile.simulate.api import SimJob, SimPool


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalerInputs:
    """What the core needs beyond the simulation's own state: its config and the team."""
    config: ScalerConfig
    team: TeamState
    """The team as the job starts: quota, borrowing, budget; its spend and GPUs grow with the job's."""
    decide_every_s: float = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class SimulatedState:
    """The simulation at one moment, in the terms the core reads."""
    now_s: float
    asked_nodes: int
    ready_nodes: int
    spot_held: int
    reserved_held: int
    spot_on_offer: int
    """The trace's spot nodes now (held ones included)."""
    trained_at: Iterable[int]
    """Node counts the job has trained at: their throughput counts as measured."""
    steps_done: int
    recovery_s: float
    last_resize_at_s: float | None
    below_min_since_s: float | None
    unready_since_s: float | None
    suspended: bool
    spend_usd: float


def policy_inputs(job: SimJob, pool: SimPool, scaler: ScalerInputs,
                  state: SimulatedState) -> tuple[JobState, TeamState, dict[str, PoolMarket]]:
    step_s = job.step_s_by_nodes
    job_state = JobState(
        name=job.name, pool=pool.name, min_nodes=job.min_nodes, max_nodes=job.max_nodes,
        current_nodes=state.asked_nodes, ready_nodes=min(state.ready_nodes, state.asked_nodes),
        gpus_per_node=job.processes_per_node,
        samples_per_s_by_nodes={n: job.samples_per_step / step_s[n] for n in state.trained_at if n in step_s},
        steps_left=job.steps - state.steps_done, samples_per_step=job.samples_per_step, recovery_s=state.recovery_s,
        last_resize_at_s=state.last_resize_at_s,
        below_min_since_s=None if state.suspended else state.below_min_since_s,
        unready_since_s=state.unready_since_s, suspended=state.suspended)
    market = PoolMarket(pool=pool.name, on_demand_usd_per_hour=pool.on_demand_usd_per_node_hour,
                        spot_usd_per_hour=pool.spot_usd_per_node_hour if pool.spot else None,
                        spot_nodes_available=max(0, state.spot_on_offer - state.spot_held) if pool.spot else 0,
                        reserved_nodes_free=max(0, pool.reserved_nodes - state.reserved_held),
                        gpu_limit=None if pool.node_limit is None else pool.node_limit * job.processes_per_node)
    team = scaler.team
    team_state = TeamState(gpu_quota=team.gpu_quota, borrowing_limit=team.borrowing_limit,
                           gpus_in_use=team.gpus_in_use + state.asked_nodes * job.processes_per_node,
                           pending=team.pending, spend_usd=team.spend_usd + state.spend_usd, budget_usd=team.budget_usd)
    return job_state, team_state, {pool.name: market}
