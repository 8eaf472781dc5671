"""The simulator's value types: the job, its pool and market, the time costs of Tensile and the
platform, scheduled disruptions, and one run's result. Plain frozen values (docs/design/simulate.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

SPOT_NOTICE_S = 120.0
"""EC2's spot interruption notice: two minutes between the notice and the reclaim."""


class SimulationError(ValueError):
    """Inputs the simulator cannot run: every problem named with its field."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SimJob:
    name: str
    steps: int
    min_nodes: int
    max_nodes: int
    processes_per_node: int
    samples_per_step: int
    step_s_by_nodes: Mapping[int, float]
    """Seconds per optimizer step at each node count min..max (measured or from the throughput model)."""
    checkpoint_every_steps: int

    def __post_init__(self) -> None:
        problems = [message for ok, message in (
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (1 <= self.min_nodes <= self.max_nodes, f"need 1 <= min_nodes <= max_nodes, got {self.min_nodes}..{self.max_nodes}"),
            (self.checkpoint_every_steps >= 1, f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}"),
            (all(self.step_s_by_nodes.get(n, 0) > 0 for n in range(self.min_nodes, self.max_nodes + 1)),
             f"step_s_by_nodes needs a time > 0 for every node count {self.min_nodes}..{self.max_nodes}, "
             f"got {dict(self.step_s_by_nodes)}"),
        ) if not ok]
        if problems:
            raise SimulationError(f"job {self.name}: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeCosts:
    """What each transition costs in seconds. Defaults: `make bench` figures on this machine
    (docs/design/leaving.md, benchmarks/checkpoint_io.py) and stated assumptions for the cloud parts;
    `--costs RUN` replaces the measured ones with a real run's (costs.costs_from_ledger)."""

    node_launch_s: float = 60.0
    """Assumption: Karpenter's NodeClaim to a Ready GPU node (EC2 launch, boot, kubelet join)."""
    image_pull_s: float = 90.0
    """Assumption: a multi-GB training image from ECR at first use on a fresh node."""
    tensile_start_s: float = 10.5
    """`make bench` floor: process start, imports, rendezvous, checkpoint load, one step."""
    recovery_unwarned_s: float = 11.9
    """`make bench`: a node SIGKILLed to the first step of the re-formed group (detection included)."""
    recovery_warned_s: float = 7.1
    """`make bench`/leaving.md: a noticed node's leave to the survivors' first step (the save apart)."""
    recovery_join_s: float = 10.5
    """A joining node: the group's re-formation to the first step at the larger size (the floor)."""
    checkpoint_stall_s: float = 2.07
    """The loop blocked per periodic checkpoint (the async host copy). This and the next two:
    `make bench` (benchmarks/checkpoint_io.py: 229 MB of ZeRO-2 state, one CPU worker, this
    machine at load ~9, 2026-12-01)."""
    time_to_durable_s: float = 8.9
    """A periodic checkpoint's start to its commit on the durable tier (written in the background)."""
    emergency_save_s: float = 6.83
    """A stop (notice, scale-up, shrink, the final step) to the synchronous checkpoint's commit;
    `tensile simulate` uses the job's emergencyCheckpointSeconds instead."""
    source: str = "defaults (make bench on this machine; cloud start-up assumed)"

    @property
    def startup_s(self) -> float:
        return self.node_launch_s + self.image_pull_s + self.tensile_start_s


@dataclass(frozen=True, kw_only=True, slots=True)
class SimPool:
    name: str
    gpu_model: str
    instance_type: str
    on_demand_usd_per_node_hour: float
    spot_usd_per_node_hour: float
    spot: bool = True
    """The pool may buy spot (its NodePool lists spot in its capacity types)."""
    fallback_to_on_demand: bool = True
    """Karpenter's capacity order always ends in on-demand (infra/plan/pools.py); False: the
    'spot without fallback' comparison."""
    reserved_nodes: int = 0
    """Reserved nodes (an ODCR or capacity block) free for this job: tried first, paid either way."""
    node_limit: int | None = None
    """The most nodes the NodePool's GPU limit allows (Karpenter launches no more); None: no limit."""
    empty_node_linger_s: float = 600.0
    """The NodePool's consolidateAfter for an empty node (10m, infra/plan/pools.py): billed after release."""


class DisruptionKind(enum.Enum):
    LOST_UNWARNED = "lost-unwarned"
    """A node gone without notice (hardware, a missed notice, a frozen host)."""
    LOST_WARNED = "lost-warned"
    """A spot notice: the node goes SPOT_NOTICE_S later."""
    ADDED = "added"
    """A node started (its start-up is paid, then it joins)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Disruption:
    """A scheduled disruption, at a step (when the group has done it) or at a time."""
    kind: DisruptionKind
    at_step: int | None = None
    at_s: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LossRecord:
    at_s: float
    warned: bool
    steps_replayed: int
    nodes_after: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SimResult:
    completed: bool
    completion_s: float
    cost_usd: float
    steps_replayed: int
    compute_s: float
    """Seconds of steps computed, replayed ones included."""
    replay_s: float
    recovery_s: float
    checkpoint_s: float
    """Periodic stalls, waits for the save in flight, and stop saves."""
    losses: tuple[LossRecord, ...] = ()
    joins: int = 0
    on_demand_node_hours: float = 0.0
    spot_node_hours: float = 0.0
    reserved_node_hours: float = 0.0
    decisions: tuple[str, ...] = field(default=())
    """The scaler's decisions that changed the size, as `t+S: decision` (when it drove the job)."""

    @property
    def useful_s(self) -> float:
        return self.compute_s - self.replay_s

    @property
    def goodput(self) -> float:
        """Share of the wall time spent on steps that were kept."""
        return self.useful_s / self.completion_s if self.completion_s > 0 else 0.0

    @property
    def unwarned_losses(self) -> int:
        return sum(1 for loss in self.losses if not loss.warned)
