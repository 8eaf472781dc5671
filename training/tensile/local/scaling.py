"""The local actuator: the scaler's policy core driving a LocalCluster against a simulated market.

It reads the job's state from the run's ledger, asks `tensile.scaler.decide`, and carries the
decision out as a cluster would: a node started to grow, SIGTERM (the trainer's agreed stop,
which saves first) to shrink, every node stopped to suspend. Each decision is printed with its
reason (docs/design/scaler.md).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tensile.config import TrainingConfig
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster, last_step
from tensile.scaler import Decision, JobState, PoolMarket, ReasonKind, ScalerConfig, TeamState, decide

RECENT_STEPS = 8
"""Throughput at a size is the median of its newest steps: old ones may predate a warm cache."""
MEASURED_STEPS = 4
"""A size counts as measured after this many steps at it (a round's first step left out): the
collapse rule must not shrink a node on one slow step."""


def throughput_by_nodes(events: list[dict[str, Any]], *, samples_per_step: int,
                        processes_per_node: int) -> dict[int, float]:
    """Samples/s at each node count the run has trained at, from the step events' durations.
    A round's first step is left out: it carries the round's warm-up (first collectives, caches)."""
    durations: dict[int, list[float]] = {}
    first_of_round = False
    for event in events:
        if event["event"] == "round-start":
            first_of_round = True
        elif event["event"] == "step" and event.get("step_s"):
            if not first_of_round:
                durations.setdefault(event["world_size"] // processes_per_node, []).append(event["step_s"])
            first_of_round = False
    return {nodes: samples_per_step / statistics.median(steps[-RECENT_STEPS:])
            for nodes, steps in durations.items() if len(steps) >= MEASURED_STEPS}


def training_nodes(events: list[dict[str, Any]], processes_per_node: int) -> int:
    """Nodes in the group that took the newest step (0 before any)."""
    steps = [e for e in events if e["event"] == "step"]
    return steps[-1]["world_size"] // processes_per_node if steps else 0


def newest_step_at(events: list[dict[str, Any]]) -> float | None:
    return next((e["t"] for e in reversed(events) if e["event"] == "step"), None)


@dataclass(slots=True)
class ScalingLog:
    """What the actuator did, for the caller and the tests."""
    decisions: list[tuple[float, int, Decision]] = field(default_factory=list)
    """(elapsed s, step, decision) for every decision that changed the size or its reason."""
    terminated: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)


class LocalScaler:
    """Sizes one local job by the policy core, every `decide_every_s`."""

    def __init__(self, cluster: LocalCluster, ledger: RunLedger, *, training: TrainingConfig,
                 scaler: ScalerConfig, market: Callable[[float], PoolMarket], team: TeamState,
                 pool: str, decide_every_s: float = 1.0, first_recovery_s: float = 10.0,
                 progress: Callable[[str], None] = print, clock: Callable[[], float] = time.time):
        self.cluster, self.ledger, self.training, self.scaler = cluster, ledger, training, scaler
        self.market, self.team, self.pool = market, team, pool
        self.decide_every_s, self.progress, self.clock = decide_every_s, progress, clock
        self.recovery_s = first_recovery_s
        """Until a resize is measured: a guess, replaced by each measured recovery."""
        self.asked: list[str] = []
        """Nodes the job should have, oldest first (terminated ones leave it at once; one that
        died by itself stays, as a reclaimed pod's replacement stays Pending)."""
        self.asked_at: dict[str, float] = {}
        self.next_index = 0
        self.started_at = clock()
        self.last_decided_at: float | None = None
        self.last_resize_at: float | None = None
        self.resize_target: int | None = None
        self.below_min_since: float | None = None
        self.unready_since: float | None = None
        self.suspended = False
        self.spend_usd = team.spend_usd
        self.log = ScalingLog()

    @property
    def processes_per_node(self) -> int:
        return self.training.elastic.processes_per_node

    def start(self) -> None:
        """Jobs start at their minimum and grow when the policy says."""
        for _ in range(self.training.elastic.min_nodes):
            self._start_node()

    def _start_node(self) -> None:
        node_id = f"node-{self.next_index}"
        self.next_index += 1
        self.cluster.start_node(node_id)
        self.asked.append(node_id)
        self.asked_at[node_id] = self.clock()
        self.log.started.append(node_id)

    def _stop_newest(self) -> None:
        # The newest node goes first, as Kubernetes removes the most recently ready pod first:
        # a node still joining is the cheapest to lose. SIGTERM: the group's agreed stop saves.
        node_id = self.asked.pop()
        self.cluster.terminate(node_id)
        self.log.terminated.append(node_id)

    def ready_nodes(self, events: list[dict[str, Any]]) -> int:
        """Nodes training now: the newest step's group, counting only nodes still running that
        were started before that step (a node just added, or one that resumed a suspended job,
        is not training until a step shows it; a reclaimed one no longer is)."""
        newest = newest_step_at(events)
        if newest is None:
            return 0
        alive = sum(1 for node_id in self.asked
                    if self.cluster.is_running(node_id) and self.asked_at[node_id] <= newest)
        return min(training_nodes(events, self.processes_per_node), alive)

    def observe(self, events: list[dict[str, Any]], now: float) -> JobState:
        elastic = self.training.elastic
        ready = self.ready_nodes(events)
        if self.resize_target is not None and ready == self.resize_target and self.last_resize_at is not None:
            first = next((e for e in events if e["event"] == "step" and e["t"] > self.last_resize_at
                          and e["world_size"] == ready * self.processes_per_node), None)
            if first is not None:
                # From the stop, not the decision: the group trains on while a new node boots, so
                # what a resize costs is the gap from the last step at the old size (or from the
                # resume, for a job that had stopped) to the first at the new one.
                stopped_at = max([e["t"] for e in events if e["event"] == "step" and e["t"] < first["t"]]
                                 + [self.last_resize_at])
                self.recovery_s = first["t"] - stopped_at
                self.resize_target = None
        # Below the minimum counts only while nodes are missing (reclaimed, never started): nodes
        # running but not yet in a step are starting, as a scheduled pod is, and are waited for.
        running = sum(1 for node_id in self.asked if self.cluster.is_running(node_id))
        below_min = ready < elastic.min_nodes and running < elastic.min_nodes and not self.suspended
        self.below_min_since = (now if self.below_min_since is None else self.below_min_since) if below_min else None
        unready = ready < len(self.asked)
        self.unready_since = (now if self.unready_since is None else self.unready_since) if unready else None
        return JobState(
            name=self.training.run.name, pool=self.pool, min_nodes=elastic.min_nodes, max_nodes=elastic.max_nodes,
            current_nodes=len(self.asked), ready_nodes=ready, gpus_per_node=self.processes_per_node,
            samples_per_s_by_nodes=throughput_by_nodes(events, samples_per_step=self.training.batch.global_batch_size,
                                                       processes_per_node=self.processes_per_node),
            steps_left=max(0, self.training.run.steps - last_step(events)),
            samples_per_step=self.training.batch.global_batch_size, recovery_s=self.recovery_s,
            last_resize_at_s=self.last_resize_at, below_min_since_s=self.below_min_since,
            unready_since_s=self.unready_since, suspended=self.suspended)

    def poll(self) -> Decision | None:
        """Decide and act, if `decide_every_s` has passed; returns the decision taken."""
        now = self.clock()
        if self.last_decided_at is not None and now - self.last_decided_at < self.decide_every_s:
            return None
        status = self.ledger.status()
        if status and status.get("state") == "completed":
            return None
        elapsed = now - self.started_at
        market = self.market(elapsed)
        if self.last_decided_at is not None:  # the meter: nodes asked for, at the pool's price
            price = market.spot_usd_per_hour if market.spot_usd_per_hour is not None else market.on_demand_usd_per_hour
            self.spend_usd += len(self.asked) * price * (now - self.last_decided_at) / 3600
        self.last_decided_at = now
        events = self.ledger.events()
        job = self.observe(events, now)
        team = dataclasses.replace(self.team, spend_usd=self.spend_usd,
                                   gpus_in_use=self.team.gpus_in_use + len(self.asked) * self.processes_per_node)
        decision = decide(job, team, {self.pool: market}, self.scaler, now_s=now)
        self._act(decision, job)
        previous = self.log.decisions[-1][2] if self.log.decisions else None
        if decision.desired_nodes != job.current_nodes or previous is None or previous.gist() != decision.gist():
            step = last_step(events)
            self.log.decisions.append((elapsed, step, decision))
            price = "unknown" if market.spot_usd_per_hour is None else f"${market.spot_usd_per_hour:.2f}/h"
            self.progress(f"t+{elapsed:6.1f}s step {step:4d} nodes {job.ready_nodes}/{job.current_nodes} ready, "
                          f"spot {price} x{market.spot_nodes_available}: {decision}")
        return decision

    def _act(self, decision: Decision, job: JobState) -> None:
        desired = decision.desired_nodes
        if desired == len(self.asked):
            return
        if decision.kind is ReasonKind.SUSPEND:
            self.suspended = True
        if decision.kind is ReasonKind.RESUME:
            self.suspended = False
        while len(self.asked) < desired:
            self._start_node()
        while len(self.asked) > desired:
            self._stop_newest()
        self.last_resize_at = self.clock()
        self.resize_target = desired if desired > 0 else None
        self.unready_since = None

    def run(self, timeout_s: float, *, poll_s: float = 0.2, on_poll: Callable[[], None] | None = None) -> bool:
        """Start the job at its minimum and size it until the run completes; True if it did.
        `on_poll` runs before each decision (a simulated cloud reclaiming nodes, say)."""
        self.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            self.poll()
            status = self.ledger.status()
            done = status is not None and status.get("state") == "completed"
            if done and not any(node.running for node in self.cluster.nodes.values()):
                return True
            time.sleep(poll_s)
        return False
