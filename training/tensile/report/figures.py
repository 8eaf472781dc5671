"""What `tensile report` shows, computed from a run's ledger events: pure functions of the events
(time-ordered dicts, as RunLedger.events() returns them), table-tested; drawing is elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]

CAUSES: dict[str, str] = {
    "hang": "lost node", "peer-lost": "lost node", "failure": "failure", "fenced": "fence",
    "rendezvous-leave": "leave", "checkpoint-corrupt": "corrupt checkpoint",
}
"""Ledger event kinds that explain why a round ended, by the label the report gives them. A
spot notice is labelled by its kind (interruption: notice; rebalance: rebalance)."""
MARKED = ("hang", "peer-lost", "failure", "fenced", "rendezvous-leave", "checkpoint-corrupt", "spot-notice",
          "reshard", "incompatible")
"""Kinds drawn as markers on the world-size timeline."""


@dataclass(frozen=True, slots=True)
class Curve:
    steps: list[int]
    values: list[float]


def _newest_by_step(events: Iterable[Event], kind: str) -> Curve:
    """A value per step; a step done again after a restart keeps its newest value."""
    by_step = {e["step"]: float(e["loss"]) for e in events if e["event"] == kind and e.get("loss") is not None}
    steps = sorted(by_step)
    return Curve(steps, [by_step[s] for s in steps])


def loss_curve(events: Iterable[Event]) -> Curve:
    return _newest_by_step(events, "step")


def eval_curve(events: Iterable[Event]) -> Curve:
    """The held-out loss (ledger `eval` events; a ledger from before them has none)."""
    return _newest_by_step(events, "eval")


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    world_size: int
    resumed_step: int
    started_t: float
    events: list[Event] = field(repr=False)
    """The events from this round's start to the next one's."""

    @property
    def steps(self) -> list[Event]:
        return [e for e in self.events if e["event"] == "step"]

    @property
    def last_step(self) -> int:
        return max((e["step"] for e in self.steps), default=self.resumed_step)

    @property
    def last_step_t(self) -> float:
        return max((e["t"] for e in self.steps), default=self.started_t)

    @property
    def first_step_began_t(self) -> float | None:
        """When the round's first step began (its end less its own duration)."""
        first = next(iter(self.steps), None)
        return None if first is None else first["t"] - float(first.get("step_s", 0.0))


def rounds_of(events: Sequence[Event]) -> list[Round]:
    """The run's rounds, each with its events; events before the first round start are dropped."""
    out: list[Round] = []
    for event in events:
        if event["event"] == "round-start":
            out.append(Round(int(event.get("round", len(out) + 1)), int(event["world_size"]),
                             int(event.get("resumed_step", 0)), float(event["t"]), []))
        elif out:
            out[-1].events.append(event)
    return out


@dataclass(frozen=True, slots=True)
class Disruption:
    kind: str
    """lost node, notice, rebalance, leave, fence, failure, join, shrink or restart."""
    t: float
    """When the group stopped training: its last step before the round ended (the cause's own
    events are markers, at their own times: a lost node is noticed later, a notice comes earlier)."""
    at_step: int
    """Steps done before it."""
    resumed_step: int
    steps_replayed: int
    recovery_s: float | None
    """From the last step before it to the first step after it began (None: no step after)."""
    world_before: int
    world_after: int


def disruptions(events: Sequence[Event]) -> list[Disruption]:
    """One per round boundary: why the group re-formed, the steps it redid and how long it did not train."""
    out = []
    rounds = rounds_of(events)
    for before, after in zip(rounds, rounds[1:]):
        causes = [e for e in before.events if e["event"] in CAUSES or e["event"] == "spot-notice"]
        kind = _cause_label(causes[0]) if causes else (
            "join" if after.world_size > before.world_size else
            "shrink" if after.world_size < before.world_size else "restart")
        began = after.first_step_began_t
        out.append(Disruption(
            kind=kind, t=before.last_step_t,
            at_step=before.last_step, resumed_step=after.resumed_step,
            steps_replayed=max(0, before.last_step - after.resumed_step),
            recovery_s=None if began is None else max(0.0, began - before.last_step_t),
            world_before=before.world_size, world_after=after.world_size))
    return out


def _cause_label(event: Event) -> str:
    if event["event"] == "spot-notice":
        return "rebalance" if event.get("kind") == "rebalance" else "notice"
    return CAUSES[event["event"]]


@dataclass(frozen=True, slots=True)
class Marker:
    t: float
    label: str
    detail: str


def markers(events: Iterable[Event]) -> list[Marker]:
    """Every event worth a mark on the timeline, and each join (a round that grew the group)."""
    out, world = [], None
    for e in events:
        kind = e["event"]
        if kind == "round-start":
            if world is not None and e["world_size"] != world:
                out.append(Marker(e["t"], "join" if e["world_size"] > world else "shrink",
                                  f"round {e.get('round')}: world size {world} → {e['world_size']}"))
            world = e["world_size"]
        elif kind in MARKED:
            label = _cause_label(e) if kind in CAUSES or kind == "spot-notice" else kind
            out.append(Marker(e["t"], label, _detail(e)))
    return out


def _detail(event: Event) -> str:
    fields = {k: v for k, v in event.items() if k not in ("t", "event") and not isinstance(v, (list, dict))}
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))[:200]


@dataclass(frozen=True, slots=True)
class WorldSize:
    t: list[float]
    world_size: list[int]
    """A step function: world_size[i] from t[i] on (0 while no group trains, between rounds)."""


def world_size_over_time(events: Sequence[Event]) -> WorldSize:
    t, sizes = [], []
    rounds = rounds_of(events)
    for i, r in enumerate(rounds):
        t.append(r.started_t)
        sizes.append(r.world_size)
        if i + 1 < len(rounds):  # the group stopped training at its last step
            t.append(r.last_step_t)
            sizes.append(0)
    if rounds:
        t.append(run_end(events))
        sizes.append(rounds[-1].world_size)
    return WorldSize(t, sizes)


def run_end(events: Sequence[Event]) -> float:
    """The completion event's time, or the newest event's."""
    done = [e["t"] for e in events if e["event"] == "completed"]
    return max(done) if done else max((e["t"] for e in events), default=0.0)


@dataclass(frozen=True, slots=True)
class Save:
    step: int
    t: float
    reason: str
    stall_s: float
    """How long the loop was blocked."""
    durable_s: float | None
    """From the save's start until it was durable on the shared tier (None: it failed)."""
    failed: bool = False


def saves(events: Iterable[Event]) -> list[Save]:
    """Every checkpoint the ledger holds. A background save's time to durable is its `durable_s`
    (until published); a synchronous save is durable when the loop resumes: its stall."""
    out = []
    for e in events:
        if e["event"] not in ("checkpoint", "checkpoint-failed"):
            continue
        failed = e["event"] == "checkpoint-failed"
        stall = float(e.get("stall_s", 0.0))
        durable = None if failed else float(e.get("durable_s", e.get("persist_s", stall) if e.get("asynchronous") else stall))
        out.append(Save(int(e["step"]), float(e["t"]), str(e.get("reason", "?")), stall, durable, failed))
    return out


GOODPUT_PARTS = ("useful steps", "replayed steps", "recovery", "checkpoint stall", "evaluation", "parked", "other")


@dataclass(frozen=True, slots=True)
class Goodput:
    wall_s: float
    """From the first round's start to the run's end."""
    seconds: dict[str, float]
    """Each of GOODPUT_PARTS; they add up to wall_s."""

    @property
    def goodput(self) -> float:
        return self.seconds["useful steps"] / self.wall_s if self.wall_s > 0 else 0.0


def goodput(events: Sequence[Event]) -> Goodput:
    """Where the run's wall time went.
    - useful steps: each step's last execution (its step_s); replayed steps: the executions a
      restart threw away and redid;
    - checkpoint stall: the loop blocked by saves; evaluation: held-out passes;
    - recovery: between rounds, from the last step to the next round's first step, less the
      saves and evaluations in that gap;
    - parked: waiting below elastic.min_nodes. The ledger does not record it (torchrun's
      rendezvous waits before any Tensile process runs), so it is 0 and such a wait is recovery;
    - other: the rest (start-up before the first step, the loop between steps)."""
    rounds = rounds_of(events)
    if not rounds:
        return Goodput(0.0, {part: 0.0 for part in GOODPUT_PARTS})
    steps = [e for e in events if e["event"] == "step"]
    last_run_of = {e["step"]: i for i, e in enumerate(steps)}
    useful = sum(float(e.get("step_s", 0.0)) for i, e in enumerate(steps) if last_run_of[e["step"]] == i)
    replayed = sum(float(e.get("step_s", 0.0)) for i, e in enumerate(steps) if last_run_of[e["step"]] != i)
    stall_at = [(s.t, s.stall_s) for s in saves(events)]
    eval_at = [(float(e["t"]), float(e.get("eval_s", 0.0))) for e in events if e["event"] == "eval"]
    recovery = 0.0
    for before, after in zip(rounds, rounds[1:]):
        # A round that never stepped ends its gap at its start: the next boundary goes on from there.
        began = after.first_step_began_t if after.first_step_began_t is not None else after.started_t
        inside = sum(s for t, s in stall_at + eval_at if before.last_step_t < t <= began)
        recovery += max(0.0, began - before.last_step_t - inside)
    wall = max(0.0, run_end(events) - rounds[0].started_t)
    seconds = {"useful steps": useful, "replayed steps": replayed, "recovery": recovery,
               "checkpoint stall": sum(s for _, s in stall_at), "evaluation": sum(s for _, s in eval_at),
               "parked": 0.0}
    seconds["other"] = max(0.0, wall - sum(seconds.values()))
    return Goodput(wall, seconds)


@dataclass(frozen=True, slots=True)
class Prices:
    usd_per_node_hour: float
    processes_per_node: int = 1
    """To turn the ledger's world sizes (processes) into nodes."""
    label: str = ""


@dataclass(frozen=True, slots=True)
class CostCurve:
    t: list[float]
    usd: list[float]
    """Cumulative cost at each t."""
    label: str = ""
    """Where the price came from (the prices file's pool, or the stack's)."""


def cost_over_time(events: Sequence[Event], prices: Prices) -> CostCurve:
    """Each round's nodes billed from its start to the next round's (or the run's end); nodes
    are world size / processes per node, rounded up. A node lost mid-round is billed to the next
    round start, and one still starting before its first round is not billed: an estimate."""
    rounds = rounds_of(events)
    t, usd, total = [], [], 0.0
    ends = [r.started_t for r in rounds[1:]] + [run_end(events)]
    for r, end in zip(rounds, ends):
        if not t:
            t.append(r.started_t)
            usd.append(0.0)
        nodes = -(-r.world_size // prices.processes_per_node)
        total += nodes * prices.usd_per_node_hour * max(0.0, end - r.started_t) / 3600.0
        t.append(end)
        usd.append(total)
    return CostCurve(t, usd, prices.label)


@dataclass(frozen=True, slots=True)
class RunFigures:
    """Everything the report draws for one run (and its reference run)."""

    label: str
    start_t: float
    loss: Curve
    eval_loss: Curve
    world: WorldSize
    markers: list[Marker]
    disruptions: list[Disruption]
    saves: list[Save]
    goodput: Goodput
    cost: CostCurve | None
    reference_label: str | None = None
    reference_loss: Curve | None = None
    reference_eval_loss: Curve | None = None
    notes: list[str] = field(default_factory=list)


def run_figures(events: Sequence[Event], *, label: str, reference: Sequence[Event] | None = None,
                reference_label: str | None = None, prices: Prices | None = None,
                notes: Sequence[str] = ()) -> RunFigures:
    rounds = rounds_of(events)
    start = rounds[0].started_t if rounds else min((e["t"] for e in events), default=0.0)
    return RunFigures(
        label=label, start_t=start, loss=loss_curve(events), eval_loss=eval_curve(events),
        world=world_size_over_time(events), markers=markers(events), disruptions=disruptions(events),
        saves=saves(events), goodput=goodput(events),
        cost=cost_over_time(events, prices) if prices else None,
        reference_label=reference_label if reference is not None else None,
        reference_loss=loss_curve(reference) if reference is not None else None,
        reference_eval_loss=eval_curve(reference) if reference is not None else None, notes=list(notes))
