"""The report's figures, computed from ledger events: tables of small runs."""

from __future__ import annotations

import pytest

from tensile.report.figures import (GOODPUT_PARTS, Prices, cost_over_time, disruptions, eval_curve, goodput,
                                    loss_curve, markers, run_figures, saves, world_size_over_time)


def start(t, world, resumed=0, number=1):
    return {"t": t, "event": "round-start", "round": number, "world_size": world, "resumed_step": resumed}


def step(t, n, loss=1.0, step_s=1.0, world=2):
    return {"t": t, "event": "step", "step": n, "loss": loss, "step_s": step_s, "world_size": world}


def run(*events):
    return sorted(events, key=lambda e: e["t"])


# Round 1 at 2 workers does steps 1-4 (1 s each), saving at 2; a cause (or none) at t=20; round 2
# resumes from step 2 (or 4) at t=30 and does steps 3-6 from t=31.
def two_rounds(cause=None, world_after=1, resumed=2):
    events = [start(0.0, 2), step(2, 1), step(3, 2), {"t": 3.5, "event": "checkpoint", "step": 2, "reason": "periodic",
                                                      "asynchronous": True, "stall_s": 0.25, "durable_s": 0.75},
              step(5, 3), step(6, 4), start(30.0, world_after, resumed=resumed, number=2)]
    if cause:
        events.append({"t": 20.0, **cause})
    events += [step(31 + i, n, world=world_after) for i, n in enumerate(range(resumed + 1, 7))]
    events.append({"t": 40.0, "event": "completed", "step": 6})
    return run(*events)


@pytest.mark.parametrize("cause, world_after, resumed, kind, replayed", [
    ({"event": "hang", "rank": 1, "silent_s": 12.0}, 1, 2, "lost node", 2),
    ({"event": "peer-lost", "rank": 1, "error": "x"}, 1, 2, "lost node", 2),
    ({"event": "spot-notice", "kind": "interruption", "rank": 1}, 1, 4, "notice", 0),
    ({"event": "spot-notice", "kind": "rebalance", "rank": 1}, 1, 4, "rebalance", 0),
    ({"event": "rendezvous-leave", "node": "b", "by": "worker"}, 1, 4, "leave", 0),
    ({"event": "fenced", "node": "a", "rank": 0}, 2, 2, "fence", 2),
    ({"event": "failure", "round": 1, "rank": 0}, 2, 2, "failure", 2),
    (None, 3, 4, "join", 0),
    (None, 1, 4, "shrink", 0),
    (None, 2, 4, "restart", 0),
])
def test_disruptions_name_the_cause_and_count_the_steps_replayed(cause, world_after, resumed, kind, replayed):
    (d,) = disruptions(two_rounds(cause, world_after, resumed))
    assert (d.kind, d.at_step, d.resumed_step, d.steps_replayed) == (kind, 4, resumed, replayed)
    assert (d.world_before, d.world_after) == (2, world_after)
    # From the last step (t=6) until the next round's first step began (t=31 less its 1 s).
    assert d.recovery_s == pytest.approx(24.0)
    assert d.t == 6.0  # when training stopped; the cause is a marker at its own time


def test_a_run_without_restarts_has_no_disruptions():
    assert disruptions(run(start(0, 2), step(1, 1), step(2, 2))) == []
    assert disruptions([]) == []


def test_the_loss_curve_keeps_a_replayed_steps_newest_loss_and_eval_events_are_optional():
    events = run(start(0, 1), step(1, 1, loss=3.0), step(2, 2, loss=2.0), start(5, 1, resumed=1, number=2),
                 step(6, 2, loss=2.5), {"t": 7, "event": "eval", "step": 2, "loss": 2.7, "eval_s": 0.5})
    assert (loss_curve(events).steps, loss_curve(events).values) == ([1, 2], [3.0, 2.5])
    assert (eval_curve(events).steps, eval_curve(events).values) == ([2], [2.7])
    assert eval_curve(events[:-1]).steps == []  # a ledger from before the eval kind


def test_goodput_splits_the_wall_time_into_parts_that_add_up():
    events = two_rounds({"event": "hang", "rank": 1}, 1, 2)
    events = run(*events, {"t": 33.5, "event": "eval", "step": 4, "loss": 1.0, "eval_s": 0.5})
    g = goodput(events)
    assert g.wall_s == 40.0 and set(g.seconds) == set(GOODPUT_PARTS)
    # 6 steps kept (1 s each); steps 3 and 4 of round 1 were redone.
    assert (g.seconds["useful steps"], g.seconds["replayed steps"]) == (6.0, 2.0)
    assert (g.seconds["checkpoint stall"], g.seconds["evaluation"], g.seconds["parked"]) == (0.25, 0.5, 0.0)
    assert g.seconds["recovery"] == pytest.approx(24.0)
    assert sum(g.seconds.values()) == pytest.approx(40.0)
    assert g.goodput == pytest.approx(6.0 / 40.0)


def test_saves_time_to_durable_is_the_publish_of_a_background_save_and_the_stall_of_a_synchronous_one():
    events = [{"t": 1, "event": "checkpoint", "step": 2, "reason": "periodic", "asynchronous": True,
               "stall_s": 0.01, "durable_s": 0.4, "persist_s": 0.3},
              {"t": 2, "event": "checkpoint", "step": 4, "reason": "stop", "stall_s": 0.9, "write_s": 0.5,
               "persist_s": 0.2},
              {"t": 3, "event": "checkpoint-failed", "step": 6, "reason": "periodic", "asynchronous": True,
               "stall_s": 0.02, "error": "OSError: x"}]
    assert [(s.step, s.stall_s, s.durable_s, s.failed) for s in saves(events)] == [
        (2, 0.01, 0.4, False), (4, 0.9, 0.9, False), (6, 0.02, None, True)]


def test_world_size_drops_to_zero_between_rounds_and_cost_bills_each_rounds_nodes():
    events = two_rounds(None, 3, 4)
    world = world_size_over_time(events)
    assert list(zip(world.t, world.world_size)) == [(0.0, 2), (6.0, 0), (30.0, 3), (40.0, 3)]
    cost = cost_over_time(events, Prices(usd_per_node_hour=3600.0))  # a dollar a node-second
    assert list(zip(cost.t, cost.usd)) == [(0.0, 0.0), (30.0, 60.0), (40.0, 90.0)]
    # Two processes a node: round 1 is one node, round 2 two (3 processes, rounded up).
    halved = cost_over_time(events, Prices(usd_per_node_hour=3600.0, processes_per_node=2))
    assert halved.usd == [0.0, 30.0, 50.0]


def test_markers_are_every_disruption_event_and_each_change_of_world_size():
    events = two_rounds({"event": "spot-notice", "kind": "interruption", "rank": 1}, 3, 4)
    assert [(m.t, m.label) for m in markers(events)] == [(20.0, "notice"), (30.0, "join")]


def test_run_figures_take_the_reference_run_and_prices_when_given():
    events = two_rounds(None, 3, 4)
    plain = run_figures(events, label="run")
    assert plain.reference_loss is None and plain.cost is None and plain.start_t == 0.0
    both = run_figures(events, label="run", reference=events, reference_label="ref", prices=Prices(1.0))
    assert both.reference_loss == plain.loss and both.reference_label == "ref" and both.cost is not None


def test_a_round_that_never_stepped_is_recovery_counted_once():
    events = run(start(0.0, 2), step(2, 1), step(3, 2), start(10.0, 1, resumed=2, number=2),
                 start(20.0, 2, resumed=2, number=3), step(26, 3), step(27, 4), {"t": 30, "event": "completed"})
    g = goodput(events)
    assert g.seconds["recovery"] == pytest.approx(22.0)  # from step 2 (t=3) until step 3 began (t=25)
    assert sum(g.seconds.values()) == pytest.approx(g.wall_s) == 30.0
    assert [(d.steps_replayed, d.recovery_s) for d in disruptions(events)] == [(0, None), (0, pytest.approx(15.0))]
