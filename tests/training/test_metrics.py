from prometheus_client import generate_latest

from tensile.metrics import TrainerMetrics, run_history


def test_trainer_metrics_expose_every_figure():
    metrics = TrainerMetrics("demo")
    metrics.round_started(world_size=2, restarts=1, preemptions=1, steps_lost=3, failures_spent=0, resumed_step=10)
    metrics.step_done(step=11, seconds=0.5, samples=16)
    metrics.checkpoint_stalled(0.02)
    metrics.checkpoint_done(step=11, reason="stop", persist_s=0.3, size=1e6)
    metrics.evaluated(step=10, loss=2.5)
    text = generate_latest(metrics.registry).decode()
    for line in ('tensile_eval_loss{run="demo"} 2.5', 'tensile_eval_step{run="demo"} 10.0',
                 'tensile_world_size{run="demo"} 2.0', 'tensile_samples_per_second{run="demo"} 32.0',
                 'tensile_last_durable_step{run="demo"} 11.0', 'tensile_steps_lost{run="demo"} 3.0',
                 'tensile_checkpoint_stall_seconds{run="demo"} 0.02', 'tensile_restarts{run="demo"} 1.0',
                 'tensile_checkpoints_total{reason="stop",run="demo"} 1.0'):
        assert line in text, line


def test_trainer_metrics_count_nodes_apart_from_processes():
    metrics = TrainerMetrics("demo")
    metrics.group_shape(nodes=2, processes_per_node=8)
    metrics.round_started(world_size=16, restarts=0, preemptions=0, steps_lost=0, failures_spent=0, resumed_step=0)
    text = generate_latest(metrics.registry).decode()
    for line in ('tensile_nodes{run="demo"} 2.0', 'tensile_processes_per_node{run="demo"} 8.0',
                 'tensile_world_size{run="demo"} 16.0'):
        assert line in text, line


def test_run_history_counts_restarts_preemptions_and_lost_steps():
    events = [
        {"event": "round-start", "t": 0, "resumed_step": 0},
        *({"event": "step", "t": s, "step": s} for s in range(1, 8)),
        {"event": "checkpoint", "t": 5.5, "step": 5, "reason": "periodic"},
        {"event": "round-start", "t": 10, "resumed_step": 5},  # steps 6 and 7 redone
        {"event": "step", "t": 11, "step": 6},
        {"event": "checkpoint", "t": 11.5, "step": 6, "reason": "stop"},
        {"event": "round-start", "t": 20, "resumed_step": 6},  # nothing lost
    ]
    assert run_history(events) == {"restarts": 2, "preemptions": 1, "steps_lost": 2}


def _history_by_definition(events: list[dict]) -> dict[str, int]:
    """Restarts, preemptions and lost steps as first written: every pair of rounds against every step."""
    rounds = [e for e in events if e["event"] == "round-start"]
    steps = [e for e in events if e["event"] == "step"]
    lost = 0
    for previous, current in zip(rounds, rounds[1:]):
        done = max((e["step"] for e in steps if previous["t"] < e["t"] < current["t"]), default=0)
        lost += max(0, done - current["resumed_step"])
    preemptions = sum(1 for e in events if e["event"] == "checkpoint" and e.get("reason") == "stop")
    return {"restarts": max(0, len(rounds) - 1), "preemptions": preemptions, "steps_lost": lost}


def _ledger_of_rounds(rng, rounds: int) -> list[list[dict]]:
    """Events of `rounds` rounds, each a list starting with its round start, at increasing times."""
    t, step, out = 0.0, 0, []
    for _ in range(rounds):
        resumed = max(0, step - rng.randint(0, 3))
        t += 1
        events = [{"event": "round-start", "t": t, "resumed_step": resumed}]
        step = resumed
        for _ in range(rng.randint(0, 6)):
            step += 1
            t += 1
            events.append({"event": "step", "t": t, "step": step})
        if rng.random() < 0.5:
            t += 0.5
            events.append({"event": "checkpoint", "t": t, "step": step,
                           "reason": rng.choice(["stop", "periodic"])})
        out.append(events)
    return out


def test_run_history_advanced_round_by_round_equals_the_whole_ledger_read_at_once():
    import random

    from tensile.metrics import RunHistory

    rng = random.Random(7)
    for _ in range(50):
        rounds = _ledger_of_rounds(rng, rng.randint(1, 8))
        history, seen = RunHistory(), []
        for events in rounds:  # each round start advances the last summary by what came since
            start, rest = events[0], events[1:]
            history = RunHistory.from_json(history.to_json()).advanced(
                [e for e in seen + [start] if history.as_of is None or e["t"] > history.as_of], as_of=start["t"])
            assert history.counts() == _history_by_definition(seen + [start])
            seen += [start] + rest
