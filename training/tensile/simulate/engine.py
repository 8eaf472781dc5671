"""The discrete-event simulation of one elastic job on one pool: nodes launched by Karpenter
(reserved, then spot, then on-demand), reclaimed by a spot trace or a schedule, the group's
re-formations, checkpoints and replays, and the scaler's core deciding the size when given.

Pure and seeded: the same inputs and seed give the same result. Training advances a checkpoint
interval at a time between events, so a run of many simulated days takes milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tensile.scaler import ReasonKind, decide
from tensile.scaler.traces import SpotTrace
from tensile.simulate.api import (SPOT_NOTICE_S, Disruption, DisruptionKind, LossRecord, SimJob, SimPool,
                                  SimResult, TimeCosts)
from tensile.simulate.scaling import ScalerInputs, SimulatedState, policy_inputs

MAX_SIMULATED_S = 180 * 24 * 3600.0
"""A run not done after 180 simulated days is reported as not completed (spot that never comes)."""


@dataclass(slots=True)
class _Node:
    id: int
    capacity: str
    """reserved, spot or on-demand."""
    launched_at: float
    ready_at: float
    released_at: float | None = None
    """When it stopped being billed (reclaimed, or released plus the empty-node linger)."""
    leaving: bool = False
    in_group: bool = False


@dataclass(slots=True)
class _Tally:
    compute_s: float = 0.0
    replay_s: float = 0.0
    recovery_s: float = 0.0
    checkpoint_s: float = 0.0
    steps_replayed: int = 0
    joins: int = 0
    losses: list[LossRecord] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


class _Simulation:
    def __init__(self, job: SimJob, pool: SimPool, costs: TimeCosts, *, trace: SpotTrace | None,
                 trace_offset_s: float, schedule: Sequence[Disruption], initial_nodes: int | None,
                 unwarned_fraction: float, seed: int, scaler: ScalerInputs | None):
        self.job, self.pool, self.costs = job, pool, costs
        self.trace, self.trace_offset_s = trace, trace_offset_s
        self.rng = random.Random(seed)
        self.unwarned_fraction = unwarned_fraction
        self.scaler = scaler
        self.events: list[tuple[float, int, str, object]] = []
        self.sequence = itertools.count()
        self.nodes: list[_Node] = []
        self.steps_done = 0
        self.train_t = 0.0
        """When the group is free to take its next step (last step's end, or a stall's, a recovery's)."""
        self.forming = True
        """No group yet: waiting for the minimum of nodes (at the start, or after falling below it)."""
        self.checkpoints: list[tuple[int, float]] = [(0, 0.0)]
        """(step, when durable) of every checkpoint: a loss rolls back to the newest durable one."""
        self.tally = _Tally()
        self.step_schedule = sorted((d for d in schedule if d.at_step is not None), key=lambda d: d.at_step)
        for d in schedule:
            if d.at_s is not None:
                self._push(d.at_s, "scheduled", d)
        self.market_driven = trace is not None
        self.desired = job.max_nodes if scaler is None else job.min_nodes
        self.initial_nodes = initial_nodes if initial_nodes is not None else self.desired
        self.last_resize_at: float | None = None
        self.below_min_since: float | None = None
        self.unready_since: float | None = None
        self.suspended = False
        self.trained_at: set[int] = set()
        self.done_at: float | None = None
        self.recovery_until = -1.0
        """The end of the re-formation in progress: a node ready before it joins that round."""
        self.formed_once = False
        self._unsettled: list[_Node] = []
        """Nodes whose cost is not yet in _settled_usd (not released for good by the last _cost)."""
        self._settled_usd = 0.0

    # --- plumbing -----------------------------------------------------------------------------
    def _push(self, at: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self.events, (at, next(self.sequence), kind, payload))

    def _group(self) -> list[_Node]:
        return [n for n in self.nodes if n.in_group]

    def _alive(self) -> list[_Node]:
        return [n for n in self.nodes if n.released_at is None and not n.leaving]

    def _step_s(self) -> float:
        return self.job.step_s_by_nodes[max(self.job.min_nodes, min(self.job.max_nodes, len(self._group())))]

    def _durable_step(self, at: float) -> int:
        return max(step for step, durable_at in self.checkpoints if durable_at <= at)

    def _spot_available(self, at: float) -> int:
        if self.trace is None:
            return 0
        return self.trace.available_at(at + self.trace_offset_s)

    # --- training -----------------------------------------------------------------------------
    def _advance(self, until: float) -> None:
        """Complete every step (and periodic checkpoint) that ends by `until`."""
        if self.forming or self.done_at is not None:
            return
        job, every = self.job, self.job.checkpoint_every_steps
        while self.steps_done < job.steps:
            step_s = self._step_s()
            if self.train_t + step_s > until:
                return
            to_boundary = min(every - self.steps_done % every, job.steps - self.steps_done)
            if self.step_schedule:  # stop at a scheduled disruption's step
                to_boundary = min(to_boundary, max(1, self.step_schedule[0].at_step - self.steps_done))
            steps = min(to_boundary, int((until - self.train_t) // step_s))
            self.steps_done += steps
            self.train_t += steps * step_s
            self.tally.compute_s += steps * step_s
            self.trained_at.add(len(self._group()))
            if self.steps_done == job.steps:
                self._final_save()
                return
            if self.steps_done % every == 0:
                self._periodic_checkpoint()
            if self._scheduled_steps():
                return  # the disruption is an event now: handled before training goes on

    def _periodic_checkpoint(self) -> None:
        # One save in flight: a new one first waits for the last to be durable (trainer._save).
        wait = max(0.0, self.checkpoints[-1][1] - self.train_t)
        stall = wait + self.costs.checkpoint_stall_s
        self.train_t += stall
        self.tally.checkpoint_s += stall
        self.checkpoints.append((self.steps_done, self.train_t + self.costs.time_to_durable_s))
        # Only the newest durable checkpoint and those after it can ever be rolled back to.
        durable = self._durable_step(self.train_t)
        self.checkpoints = [c for c in self.checkpoints if c[0] >= durable]

    def _stop_commit_time(self) -> float:
        """When a stop save asked for now would commit (the step in flight, the save in flight, the save)."""
        end = self.train_t + (0.0 if self.forming or self.steps_done >= self.job.steps else self._step_s())
        return max(end, self.checkpoints[-1][1]) + self.costs.emergency_save_s

    def _stop_save(self) -> float:
        """The agreed stop: the step in flight ends, then a synchronous save; returns its commit time."""
        self._finish_step_in_flight()
        wait = max(0.0, self.checkpoints[-1][1] - self.train_t)
        self.train_t += wait + self.costs.emergency_save_s
        self.tally.checkpoint_s += wait + self.costs.emergency_save_s
        self.checkpoints.append((self.steps_done, self.train_t))
        return self.train_t

    def _finish_step_in_flight(self) -> None:
        if self.forming or self.steps_done >= self.job.steps:
            return
        step_s = self._step_s()
        self.steps_done += 1
        self.train_t += step_s
        self.tally.compute_s += step_s
        self._scheduled_steps()

    def _final_save(self) -> None:
        self.train_t += self.costs.emergency_save_s
        self.tally.checkpoint_s += self.costs.emergency_save_s
        self.done_at = self.train_t

    def _scheduled_steps(self) -> bool:
        """Turn the disruptions scheduled at the steps done into events now; True if any."""
        due = False
        while self.step_schedule and self.step_schedule[0].at_step <= self.steps_done:
            self._push(self.train_t, "scheduled", self.step_schedule.pop(0))
            due = True
        return due

    # --- membership ---------------------------------------------------------------------------
    def _reform(self, at: float, recovery_s: float) -> None:
        """The group re-forms with every ready node, or waits for the minimum."""
        ready = [n for n in self._alive() if n.ready_at <= at]
        for node in self.nodes:
            node.in_group = node in ready
        if len(ready) < self.job.min_nodes:
            self.forming = True
            self.below_min_since = self.below_min_since if self.below_min_since is not None else at
            return
        self.forming = False
        self.below_min_since = None
        if not self.formed_once:  # the first round's start-up is the nodes' own (tensile_start_s)
            self.formed_once, recovery_s = True, 0.0
        start = max(at, self.train_t)
        self.train_t = start + recovery_s
        self.recovery_until = self.train_t
        self.tally.recovery_s += recovery_s

    def _lose(self, node: _Node, at: float) -> None:
        """A node gone without warning: the group rolls back to its newest durable checkpoint."""
        was_member = node.in_group
        node.released_at = at
        node.in_group = False
        if not was_member or self.done_at is not None:
            return
        if self.forming:  # the group is waiting for its minimum: nothing trains, nothing to lose
            return
        self._advance(at)
        durable = self._durable_step(at)
        replayed = self.steps_done - durable
        self.tally.replay_s += replayed * self._step_s_of(len(self._group()) + 1)
        self.tally.steps_replayed += replayed
        self.steps_done = durable
        self.checkpoints = [c for c in self.checkpoints if c[0] <= durable]
        self.train_t = max(self.train_t, at)  # the step in flight is lost too
        self._reform(at, self.costs.recovery_unwarned_s)
        self.tally.losses.append(LossRecord(at_s=at, warned=False, steps_replayed=replayed,
                                            nodes_after=len(self._group())))

    def _step_s_of(self, nodes: int) -> float:
        return self.job.step_s_by_nodes[max(self.job.min_nodes, min(self.job.max_nodes, nodes))]

    def _notice(self, node: _Node, at: float) -> None:
        """A spot notice: stop at the next step, save, leave, if the save fits the notice."""
        node.leaving = True
        if not node.in_group or self.forming or self.done_at is not None:
            node.released_at = at + (0.0 if not node.in_group else SPOT_NOTICE_S)
            node.in_group = False
            return
        self._advance(at)
        if self.done_at is not None:
            node.released_at = at
            return
        if self._stop_commit_time() > at + SPOT_NOTICE_S:
            # The save would not commit before the reclaim: the node goes mid-save, as if unwarned.
            self._push(at + SPOT_NOTICE_S, "reclaim", node)
            return
        committed = self._stop_save()
        node.released_at = committed
        node.in_group = False
        self._reform(committed, self.costs.recovery_warned_s)
        self.tally.losses.append(LossRecord(at_s=at, warned=True, steps_replayed=0, nodes_after=len(self._group())))

    def _join_ready(self, node: _Node, at: float) -> None:
        if self.done_at is not None:
            return
        if self.forming:
            self._reform(at, self.costs.recovery_join_s)
            return
        if at <= self.recovery_until:  # the group is re-forming now: the node joins that round
            node.in_group = True
            return
        self._advance(at)
        if self.done_at is not None:
            return
        committed = self._stop_save()
        self.tally.joins += 1
        self._reform(committed, self.costs.recovery_join_s)

    # --- Karpenter ----------------------------------------------------------------------------
    def _launch(self, at: float, count: int) -> None:
        for _ in range(count):
            reserved_used = sum(1 for n in self._alive() if n.capacity == "reserved")
            spot_used = sum(1 for n in self._alive() if n.capacity == "spot")
            if reserved_used < self.pool.reserved_nodes:
                capacity = "reserved"
            elif self.pool.spot and self.market_driven and spot_used < self._spot_available(at):
                capacity = "spot"
            elif self.pool.fallback_to_on_demand or not self.market_driven:
                capacity = "on-demand"
            else:
                return  # no capacity: pending until the next tick
            node = _Node(id=len(self.nodes), capacity=capacity, launched_at=at, ready_at=at + self.costs.startup_s)
            self.nodes.append(node)
            self._unsettled.append(node)
            self._push(node.ready_at, "ready", node)

    def _provision(self, at: float) -> None:
        if self.done_at is None:
            desired = self.desired if self.pool.node_limit is None else min(self.desired, self.pool.node_limit)
            self._launch(at, desired - len(self._alive()))

    def _tick(self, at: float) -> None:
        available = self._spot_available(at)
        spot = [n for n in self._alive() if n.capacity == "spot"]
        for node in sorted(spot, key=lambda n: -n.launched_at)[:max(0, len(spot) - available)]:
            if self.rng.random() < self.unwarned_fraction:
                self._lose(node, at)
            else:
                self._notice(node, at)
        self._provision(at)
        if self.trace is not None:
            self._push(self.trace.next_change_s(at + self.trace_offset_s) - self.trace_offset_s, "tick")

    # --- the scaler ---------------------------------------------------------------------------
    def _decide(self, at: float) -> None:
        scaler = self.scaler
        self._advance(at)
        if self.done_at is not None:
            return
        alive = self._alive()
        ready = 0 if self.forming else len(self._group())
        # The Job's parallelism is what was asked; nodes Karpenter could not launch (no capacity, the
        # NodePool's limit) stay asked and unready, as pending pods do, until the core gives them up.
        asked = max(self.desired, len(alive))
        unready = ready < asked
        self.unready_since = (self.unready_since if self.unready_since is not None else at) if unready else None
        job, team, market = policy_inputs(self.job, self.pool, scaler, SimulatedState(
            now_s=at, asked_nodes=asked, ready_nodes=ready,
            spot_held=sum(1 for n in alive if n.capacity == "spot"),
            reserved_held=sum(1 for n in alive if n.capacity == "reserved"), spot_on_offer=self._spot_available(at),
            trained_at=self.trained_at, steps_done=self.steps_done, recovery_s=self.costs.recovery_join_s,
            last_resize_at_s=self.last_resize_at, below_min_since_s=self.below_min_since,
            unready_since_s=self.unready_since, suspended=self.suspended, spend_usd=self._cost(at)))
        decision = decide(job, team, market, scaler.config, now_s=at)
        if decision.desired_nodes != asked:
            self.tally.decisions.append(f"t+{at:.0f}s step {self.steps_done}: {decision}")
            self.last_resize_at = at
            self.suspended = decision.kind is ReasonKind.SUSPEND or (self.suspended and decision.desired_nodes == 0)
            if decision.kind in (ReasonKind.SUSPEND, ReasonKind.RESUME):
                # Below the minimum is counted afresh from a resume (its nodes still starting), as
                # the local actuator counts it only while not suspended.
                self.below_min_since = at if decision.kind is ReasonKind.RESUME else None
            self.desired = decision.desired_nodes
            surplus = sorted(alive, key=lambda n: -n.launched_at)[:max(0, len(alive) - self.desired)]
            if surplus:
                self._release(surplus, at)
            self._provision(at)
        self._push(at + scaler.decide_every_s, "decide")

    def _release(self, nodes: list[_Node], at: float) -> None:
        """SIGTERM: the group's agreed stop saves first, the nodes leave, the rest re-form."""
        members = [n for n in nodes if n.in_group]
        committed = at
        if members and not self.forming:
            self._advance(at)
            committed = self._stop_save()
        for node in nodes:
            node.leaving, node.in_group = True, False
            node.released_at = committed + self.pool.empty_node_linger_s
        if members and not self.forming:
            self._reform(committed, self.costs.recovery_join_s)

    # --- accounting ---------------------------------------------------------------------------
    def _price(self, node: _Node) -> float:
        if node.capacity == "spot":
            return self.pool.spot_usd_per_node_hour
        return self.pool.on_demand_usd_per_node_hour

    def _hours(self, node: _Node, until: float) -> float:
        end = min(until, node.released_at) if node.released_at is not None else until
        return max(0.0, end - node.launched_at) / 3600

    def _cost(self, until: float) -> float:
        """Spend up to `until`; a node released by then is summed once (the scaler asks every minute)."""
        still_open = []
        for node in self._unsettled:
            if node.released_at is not None and node.released_at <= until:
                self._settled_usd += self._price(node) * self._hours(node, until)
            else:
                still_open.append(node)
        self._unsettled = still_open
        return self._settled_usd + sum(self._price(n) * self._hours(n, until) for n in still_open)

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> SimResult:
        initial = self.initial_nodes if self.pool.node_limit is None else min(self.initial_nodes, self.pool.node_limit)
        self._launch(0.0, initial)
        if self.trace is not None:
            self._push(self.trace.next_change_s(self.trace_offset_s) - self.trace_offset_s, "tick")
        if self.scaler is not None:
            self._push(self.scaler.decide_every_s, "decide")
        while self.done_at is None:
            next_event = self.events[0][0] if self.events else MAX_SIMULATED_S
            self._advance(min(next_event, MAX_SIMULATED_S))
            if self.done_at is not None and self.done_at <= next_event:
                break
            if not self.events:
                break  # nothing will happen again: training ran as far as it could
            if self.events[0][0] >= MAX_SIMULATED_S:
                break
            at, _, kind, payload = heapq.heappop(self.events)
            if kind == "tick":
                self._tick(at)
            elif kind == "ready":
                if payload.released_at is None and not payload.leaving:
                    self._join_ready(payload, at)
            elif kind == "reclaim":
                if payload.released_at is None or payload.leaving:
                    payload.leaving = False
                    self._lose(payload, at)
                    self._provision(at)
            elif kind == "decide":
                self._decide(at)
            elif kind == "scheduled":
                self._scheduled(payload, at)
        return self._result()

    def _scheduled(self, disruption: Disruption, at: float) -> None:
        if disruption.kind is DisruptionKind.ADDED:
            self.desired += 1
            self._launch(at, 1)
            return
        group = sorted(self._group(), key=lambda n: -n.launched_at)
        if not group:
            return
        if disruption.kind is DisruptionKind.LOST_UNWARNED:
            self._lose(group[0], at)
        else:
            self._notice(group[0], at)
        if self.market_driven:
            self._provision(at)

    def _result(self) -> SimResult:
        completed = self.done_at is not None
        end = self.done_at if completed else MAX_SIMULATED_S
        for node in self.nodes:  # Karpenter deletes an empty node after consolidateAfter
            if node.released_at is None or node.released_at > end:
                node.released_at = end + self.pool.empty_node_linger_s
        hours = {capacity: sum(self._hours(n, float("inf")) for n in self.nodes if n.capacity == capacity)
                 for capacity in ("on-demand", "spot", "reserved")}
        tally = self.tally
        return SimResult(
            completed=completed, completion_s=end, cost_usd=self._cost(float("inf")),
            steps_replayed=tally.steps_replayed, compute_s=tally.compute_s, replay_s=tally.replay_s,
            recovery_s=tally.recovery_s, checkpoint_s=tally.checkpoint_s, losses=tuple(tally.losses),
            joins=tally.joins, on_demand_node_hours=hours["on-demand"], spot_node_hours=hours["spot"],
            reserved_node_hours=hours["reserved"], decisions=tuple(tally.decisions))


def simulate(job: SimJob, pool: SimPool, costs: TimeCosts, *, trace: SpotTrace | None = None,
             trace_offset_s: float = 0.0, schedule: Sequence[Disruption] = (), initial_nodes: int | None = None,
             unwarned_fraction: float = 0.0, seed: int = 0, scaler: ScalerInputs | None = None) -> SimResult:
    """One run of `job` on `pool`. With a trace, Karpenter keeps the job at its desired size from
    reserved, spot (as many as the trace offers) and on-demand nodes; without one, capacity is
    whatever the schedule starts and stops. `unwarned_fraction` of the trace's reclaims come without
    the two-minute notice. `scaler`: the policy core sets the size (else: always `max_nodes`)."""
    if not 0 <= unwarned_fraction <= 1:
        raise ValueError(f"unwarned_fraction must be in [0, 1], got {unwarned_fraction}")
    return _Simulation(job, pool, costs, trace=trace, trace_offset_s=trace_offset_s, schedule=schedule,
                       initial_nodes=initial_nodes, unwarned_fraction=unwarned_fraction, seed=seed,
                       scaler=scaler).run()
