import json
import multiprocessing

from tensile.elastic.ledger import RunLedger


def test_ledger_events_round_trip_in_order(tmp_path):
    ledger = RunLedger(tmp_path / "run")

    ledger.record("round-start", round=1, world_size=2)
    ledger.record("step", step=1, loss=2.5)

    events = ledger.events()
    assert [{k: v for k, v in e.items() if k != "t"} for e in events] == [
        {"event": "round-start", "round": 1, "world_size": 2},
        {"event": "step", "step": 1, "loss": 2.5},
    ]
    assert events[0]["t"] <= events[1]["t"]


def test_ledger_events_empty_before_anything_is_recorded(tmp_path):
    assert RunLedger(tmp_path / "run").events() == []


def test_ledger_events_skip_a_torn_last_line(tmp_path):
    ledger = RunLedger(tmp_path / "run")
    ledger.record("step", step=1, loss=1.0)
    with open(ledger.events_path, "a") as f:
        f.write('{"event": "step", "step": 2, "lo')  # the writer was killed mid-line

    assert [e["step"] for e in ledger.events()] == [1]


def _open_rounds(run_dir, barrier, results, count):
    ledger = RunLedger(run_dir)
    barrier.wait()
    results.put([ledger.open_round({"pid": multiprocessing.current_process().pid}) for _ in range(count)])


def test_ledger_open_round_numbers_are_unique_under_concurrent_callers(tmp_path):
    context = multiprocessing.get_context("fork")
    callers, rounds_each = 6, 5
    barrier, results = context.Barrier(callers), context.Queue()
    processes = [context.Process(target=_open_rounds, args=(tmp_path / "run", barrier, results, rounds_each))
                 for _ in range(callers)]
    for p in processes:
        p.start()
    numbers = [n for _ in processes for n in results.get(timeout=30)]
    for p in processes:
        p.join(timeout=30)

    assert sorted(numbers) == list(range(1, callers * rounds_each + 1))


def test_ledger_open_round_records_its_details(tmp_path):
    ledger = RunLedger(tmp_path / "run")

    first = ledger.open_round({"world_size": 2, "token": "abc"})
    second = ledger.open_round({"world_size": 1, "token": "def"})

    assert (first, second) == (1, 2)
    assert json.loads((ledger.rounds_dir / "2").read_text()) == {"world_size": 1, "token": "def"}


def test_ledger_record_failure_spends_once_per_round(tmp_path):
    ledger = RunLedger(tmp_path / "run")
    assert ledger.failures_spent() == 0

    assert ledger.record_failure(3, {"rank": 0}) is True
    assert ledger.record_failure(3, {"rank": 1}) is False  # another rank of the same round
    assert ledger.failures_spent() == 1
    assert ledger.record_failure(4, {"rank": 1}) is True
    assert ledger.failures_spent() == 2
    assert json.loads((ledger.failures_dir / "round-3.json").read_text()) == {"rank": 0}


def test_ledger_status_is_none_until_written_then_latest(tmp_path):
    ledger = RunLedger(tmp_path / "run")
    assert ledger.status() is None

    ledger.write_status("failed", reason="budget")
    ledger.write_status("completed", step=200)

    status = ledger.status()
    assert (status["state"], status["step"]) == ("completed", 200)
    assert "reason" not in status
    assert sorted(p.name for p in ledger.run_dir.iterdir()) == ["status.json"]


def test_ledger_status_unreadable_is_none(tmp_path):
    ledger = RunLedger(tmp_path / "run")
    ledger.run_dir.mkdir()
    ledger.status_path.write_text("{torn")

    assert ledger.status() is None


def test_ledger_last_round_and_string_failure_keys(tmp_path):
    ledger = RunLedger(tmp_path)
    assert ledger.last_round() == 0
    ledger.open_round({})
    ledger.open_round({})
    assert ledger.last_round() == 2
    # A worker that died before its round began is keyed after the last round.
    assert ledger.record_failure("2-before-start", {"rank": "0"}) is True
    assert ledger.record_failure("2-before-start", {"rank": "1"}) is False
    assert ledger.failures_spent() == 1
