import pytest

from tensile.local.demo import Disruption, summarize


def _loss(step, round_number):
    return 10.0 / step + round_number / 1000  # the round marks which run of a replayed step it was


def _story():
    """2 workers → node lost at step 40 (last checkpoint 30) → 1 worker → node added at step 80
    (stop agreed, checkpoint 81) → 2 workers until step 120. Times in seconds."""
    events = [{"t": 0.0, "event": "round-start", "round": 1, "world_size": 2, "resumed_step": 0}]
    events += [{"t": float(s), "event": "step", "step": s, "loss": _loss(s, 1)} for s in range(1, 41)]
    events.insert(31, {"t": 30.1, "event": "checkpoint", "step": 30, "reason": "periodic"})
    # node-b vanishes at t=40.5; the survivor waits out the collective timeout, then re-forms.
    events.append({"t": 50.0, "event": "round-start", "round": 2, "world_size": 1, "resumed_step": 30})
    events += [{"t": 50.0 + s - 30, "event": "step", "step": s, "loss": _loss(s, 2)} for s in range(31, 82)]
    events.append({"t": 101.2, "event": "checkpoint", "step": 81, "reason": "stop"})
    events.append({"t": 105.0, "event": "round-start", "round": 3, "world_size": 2, "resumed_step": 81})
    events += [{"t": 105.0 + s - 81, "event": "step", "step": s, "loss": _loss(s, 3)} for s in range(82, 121)]
    disruptions = [Disruption("node-lost", "node-b", 40.5, 40), Disruption("node-added", "node-c", 100.5, 80)]
    return events, disruptions


def test_summarize_tells_the_story_of_a_shrink_and_grow():
    summary = summarize(*_story())

    assert summary.steps_done == 120
    assert summary.timeline == [(1, 2, 0), (2, 1, 30), (3, 2, 81)]
    assert summary.restarts == 2
    assert summary.failures_spent == 0
    assert summary.final_loss == pytest.approx(_loss(120, 3))


def test_summarize_node_lost_replays_the_steps_since_the_last_checkpoint():
    lost, _ = summarize(*_story()).events

    assert (lost.kind, lost.node, lost.at_step) == ("node-lost", "node-b", 40)
    assert (lost.resumed_step, lost.steps_lost, lost.new_world_size) == (30, 10, 1)
    assert lost.recovery_s == pytest.approx(51.0 - 40.5)  # to the first step of the new round


def test_summarize_node_added_with_a_stop_checkpoint_loses_nothing():
    _, added = summarize(*_story()).events

    assert (added.kind, added.node, added.at_step) == ("node-added", "node-c", 80)
    assert (added.resumed_step, added.steps_lost, added.new_world_size) == (81, 0, 2)
    assert added.recovery_s == pytest.approx(106.0 - 100.5)


def test_summarize_replayed_step_keeps_its_newest_loss():
    summary = summarize(*_story())

    assert summary.losses[35] == pytest.approx(_loss(35, 2))
    assert summary.losses[30] == pytest.approx(_loss(30, 1))
    assert sorted(summary.losses) == list(range(1, 121))


def test_summarize_counts_failures():
    events, _ = _story()
    events.append({"t": 200.0, "event": "failure", "round": 3, "rank": 0})

    assert summarize(events, []).failures_spent == 1


def test_summarize_disruption_with_no_later_round_has_no_recovery():
    events, _ = _story()
    late = Disruption("node-lost", "node-a", 500.0, 120)

    (report,) = summarize(events, [late]).events

    assert (report.resumed_step, report.steps_lost, report.recovery_s, report.new_world_size) == (None,) * 4


def test_summarize_no_events():
    summary = summarize([], [])

    assert (summary.steps_done, summary.timeline, summary.restarts, summary.final_loss) == (0, [], 0, None)
