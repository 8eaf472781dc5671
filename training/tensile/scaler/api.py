"""The scaler's value types: what the policy core reads (job, team, market) and what it decides.

Plain frozen values, no Kubernetes or cloud types: the cluster controller and the local actuator
each translate their world into these, so one core decides for both (docs/design/scaler.md).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True, slots=True)
class JobState:
    name: str
    pool: str
    """The NodePool its nodes come from (a job stays on its flavor, hence on one pool)."""
    min_nodes: int
    max_nodes: int
    current_nodes: int
    """Nodes asked for (the Job's `parallelism`; 0 while suspended)."""
    ready_nodes: int
    """Nodes training now (pods ready; in the local mode, nodes in the current round)."""
    gpus_per_node: int
    samples_per_s_by_nodes: Mapping[int, float] = field(default_factory=dict)
    """Measured throughput at each node count the run has trained at."""
    steps_left: int
    samples_per_step: int
    """The global batch: every step is this many samples at any node count."""
    recovery_s: float
    """Measured time of the last resize, from the stop to the first step at the new size."""
    last_resize_at_s: float | None = None
    """When the scaler last changed the size (the caller's clock, the same as `now_s`)."""
    below_min_since_s: float | None = None
    """Since when the job has lacked capacity for its minimum: ready_nodes < min_nodes with fewer
    than min_nodes nodes even placed (pods Pending for want of a node; in the local mode, processes
    gone). None otherwise, also while placed nodes are still starting: those are waited for."""
    unready_since_s: float | None = None
    """Since when ready_nodes < current_nodes (nodes asked for, not training); None if none."""
    suspended: bool = False
    priority: int = 0

    def __post_init__(self) -> None:
        # An actuator that misreads its world must fail here, not scale a job on nonsense.
        problems = [message for ok, message in (
            (1 <= self.min_nodes <= self.max_nodes, f"need 1 <= min_nodes <= max_nodes, got {self.min_nodes}..{self.max_nodes}"),
            (0 <= self.current_nodes <= self.max_nodes, f"current_nodes {self.current_nodes} outside 0..{self.max_nodes}"),
            (0 <= self.ready_nodes <= self.current_nodes or self.suspended,
             f"ready_nodes {self.ready_nodes} outside 0..current_nodes {self.current_nodes}"),
            (self.gpus_per_node >= 1, f"gpus_per_node must be >= 1, got {self.gpus_per_node}"),
            (self.steps_left >= 0 and self.samples_per_step >= 1,
             f"need steps_left >= 0 and samples_per_step >= 1, got {self.steps_left}, {self.samples_per_step}"),
            (self.recovery_s >= 0, f"recovery_s must be >= 0, got {self.recovery_s}"),
        ) if not ok]
        if problems:
            raise ValueError(f"job {self.name}: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingWorkload:
    name: str
    priority: int
    gpus: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamState:
    gpu_quota: int
    """The team's nominal GPUs (its ClusterQueue)."""
    borrowing_limit: int
    gpus_in_use: int
    """GPUs admitted to the team's workloads now, this job's included."""
    pending: tuple[PendingWorkload, ...] = ()
    """Workloads waiting in the team's queue."""
    spend_usd: float
    """Month-to-date spend (the enforcer's meter)."""
    budget_usd: float

    @property
    def gpus_free(self) -> int:
        return self.gpu_quota + self.borrowing_limit - self.gpus_in_use

    @property
    def spend_fraction(self) -> float:
        return self.spend_usd / self.budget_usd if self.budget_usd > 0 else float("inf")


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolMarket:
    pool: str
    on_demand_usd_per_hour: float
    """Per node."""
    spot_usd_per_hour: float | None = None
    """Per node; None where unknown."""
    spot_nodes_available: int | None = None
    """Spot nodes on offer now; None where unknown (then spot is not counted on)."""
    reserved_nodes_free: int = 0
    """Reserved nodes (capacity blocks, ODCRs) paid for and idle: their marginal price is zero."""
    gpu_limit: int | None = None
    """The NodePool's GPU limit (Karpenter launches nothing past it); None where unknown. A grow
    past it asks for a node that never comes, given back only after grow_ready_deadline_s."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeOffer:
    """Where the next node would come from, and what it would cost per hour."""
    source: str
    usd_per_hour: float


class ReasonKind(enum.Enum):
    HOLD = "hold"
    GROW = "grow"
    RESUME = "resume"
    SHRINK_PRIORITY = "shrink-priority"
    SHRINK_BUDGET = "shrink-budget"
    SHRINK_TRIGGER = "shrink-trigger"
    SHRINK_COLLAPSE = "shrink-collapse"
    SHRINK_NOT_READY = "shrink-not-ready"
    SUSPEND = "suspend"


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    desired_nodes: int
    """0 means suspended (the Workload deactivated, its quota released)."""
    kind: ReasonKind
    reason: str

    def __str__(self) -> str:
        return f"{self.kind.value} -> {self.desired_nodes}: {self.reason}"

    def gist(self) -> tuple[ReasonKind, str]:
        """The decision without its figures: actuators report a hold again only when this changes."""
        return self.kind, re.sub(r"[-+~$]?\d[\d.,]*", "#", self.reason)
