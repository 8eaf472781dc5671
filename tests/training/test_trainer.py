"""The trainer's pure parts."""

from __future__ import annotations

import pytest

from tensile.trainer import step_timeout


@pytest.mark.parametrize(("configured", "slowest", "timeout"), [
    (60.0, 10.0, 60.0),    # steps well inside the configured watchdog
    (60.0, 80.0, 240.0),   # 8 → 1 workers: a 10 s step became 80 s, and is not a hang
    (60.0, 0.0, 60.0),     # before any step of the round
    (0.6, 1.0, 3.0),
])
def test_the_step_watchdog_follows_the_slowest_step_of_the_round(configured, slowest, timeout):
    assert step_timeout(configured, slowest) == pytest.approx(timeout)


def test_a_round_start_reads_the_events_since_the_last_summary_only(tmp_path, monkeypatch):
    import json
    import os
    import time
    from types import SimpleNamespace

    from tensile.elastic import ledger as ledger_module
    from tensile.elastic.ledger import RunLedger
    from tensile.trainer import Trainer

    ledger = RunLedger(tmp_path)
    trainer = SimpleNamespace(ledger=ledger)
    ledger.events_dir.mkdir(parents=True)

    def write(name: str, events: list[dict], modified: float) -> None:
        path = ledger.events_dir / name
        with path.open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in events)
        os.utime(path, (modified, modified))

    t0 = time.time() - 4 * ledger_module.CLOCK_MARGIN_S
    # Round 1 (long ago) in a file of its own, as that round's worker process wrote it.
    write("000001.jsonl", [{"t": t0, "event": "round-start", "resumed_step": 0}], t0)
    assert Trainer._run_history(trainer, 1).counts() == {"restarts": 0, "preemptions": 0, "steps_lost": 0}
    write("000001.jsonl", [{"t": t0 + s, "event": "step", "step": s} for s in range(1, 6)], t0 + 5)
    # Round 2 resumes from step 3 (steps 4 and 5 are redone), beyond the clock margin later.
    t2 = t0 + 2 * ledger_module.CLOCK_MARGIN_S
    write("000002.jsonl", [{"t": t2, "event": "round-start", "resumed_step": 3}], t2)
    assert Trainer._run_history(trainer, 2).counts() == {"restarts": 1, "preemptions": 0, "steps_lost": 2}
    now = time.time()
    write("000002.jsonl", [{"t": now + s, "event": "step", "step": 3 + s} for s in range(1, 4)], now + 3)
    write("000003.jsonl", [{"t": now + 10, "event": "round-start", "resumed_step": 5}], now + 10)

    read = []
    real_read = ledger_module._read_events
    monkeypatch.setattr(ledger_module, "_read_events", lambda path: read.append(path.name) or real_read(path))
    history = Trainer._run_history(trainer, 3)
    assert history.counts() == {"restarts": 2, "preemptions": 0, "steps_lost": 3}  # 2, then 6 → 5
    # Round 1's file was last written before round 2's summary was taken: not read again.
    assert read == ["000002.jsonl", "000003.jsonl"]
    assert ledger.latest_round_summary(before=4) == history.to_json()
