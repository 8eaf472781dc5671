import json
import multiprocessing
import os
from pathlib import Path


from tensile.elastic import ledger as ledger_module
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
    with open(ledger.writer_path(), "a") as f:
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


def _serve_listing_from(monkeypatch, directory: Path, stale: list[str]) -> None:
    """Make `os.listdir` of `directory` answer an older view, as an NFS client's directory cache can."""
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": list(stale) if Path(path) == directory else real(path))


def _clock(monkeypatch, *times):
    ticks = iter(times)
    monkeypatch.setattr(ledger_module.time, "time", lambda: next(ticks))


def test_ledger_reads_an_old_single_file_ledger_merged_with_new_writers(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    # What older versions wrote: every process appending to one `events.jsonl`.
    (run / "events.jsonl").write_text(
        '{"event": "round-start", "round": 1, "t": 1.0, "world_size": 2}\n'
        '{"event": "step", "loss": 2.5, "step": 1, "t": 3.0}\n'
        '{"event": "step", "loss": 2.4, "step": 2, "t": 5.0}\n')
    _clock(monkeypatch, 2.0, 5.0, 6.0)
    ledger = RunLedger(run)
    ledger.record("peer-lost", rank=1)
    ledger.record("round-start", round=2, world_size=1)  # the same time as the old file's last step
    ledger.record("step", step=3, loss=2.3)

    assert [(e["t"], e["event"]) for e in ledger.events()] == [
        (1.0, "round-start"), (2.0, "peer-lost"), (3.0, "step"), (5.0, "step"), (5.0, "round-start"),
        (6.0, "step")]
    assert (run / "events.jsonl").read_text().count("\n") == 3  # the old file is never written
    assert sorted(os.listdir(run / "events")) == ["000001.jsonl"]


def _append_events(run_dir, barrier, count):
    ledger = RunLedger(run_dir)
    barrier.wait()
    for i in range(count):
        # Lines well past PIPE_BUF: interleaved writes into one file would tear them.
        ledger.record("step", pid=os.getpid(), i=i, pad="x" * 8192)


def test_ledger_concurrent_writers_each_append_their_own_file_and_every_line_is_intact(tmp_path):
    context = multiprocessing.get_context("fork")
    writers, count = 6, 150
    barrier = context.Barrier(writers)
    processes = [context.Process(target=_append_events, args=(tmp_path / "run", barrier, count))
                 for _ in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * writers

    ledger = RunLedger(tmp_path / "run")
    events = ledger.events()
    by_writer: dict[int, list[int]] = {}
    for e in events:
        by_writer.setdefault(e["pid"], []).append(e["i"])
    assert len(events) == writers * count and all(len(e["pad"]) == 8192 for e in events)
    assert sorted(by_writer) == sorted(p.pid for p in processes)
    assert all(order == list(range(count)) for order in by_writer.values())  # each writer's order kept
    files = ledger.event_files()[1:]
    assert len(files) == writers
    for path in files:  # one writer per file: no file is appended to by two processes
        assert len({json.loads(line)["pid"] for line in path.read_text().splitlines()}) == 1
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)


def test_ledger_events_and_new_writers_see_past_a_stale_listing(tmp_path, monkeypatch):
    ledger = RunLedger(tmp_path / "run")
    ledger.record("round-start", round=1)
    stale = os.listdir(ledger.events_dir)
    for writer in range(2):  # two later processes, each with its own file
        ledger_module._writers.clear()
        RunLedger(tmp_path / "run").record("step", step=writer + 1)
    _serve_listing_from(monkeypatch, ledger.events_dir, stale)

    assert [e.get("step") for e in ledger.events()] == [None, 1, 2]
    ledger_module._writers.clear()
    ledger.record("step", step=3)  # a new writer does not take a file the listing missed
    assert ledger.writer_path().name == "000004.jsonl"
    assert [e.get("step") for e in ledger.events()] == [None, 1, 2, 3]


def test_ledger_rounds_are_numbered_past_a_stale_listing(tmp_path, monkeypatch):
    ledger = RunLedger(tmp_path / "run")
    ledger.open_round({})
    stale = os.listdir(ledger.rounds_dir)
    ledger.open_round({})
    ledger.open_round({})
    _serve_listing_from(monkeypatch, ledger.rounds_dir, stale)

    assert ledger.last_round() == 3
    assert ledger.open_round({}) == 4


def _write_statuses(run_dir, barrier, errors, count):
    ledger = RunLedger(run_dir)
    barrier.wait()
    try:
        for i in range(count):
            ledger.write_status("failed", reason=f"rank {os.getpid()} attempt {i}")
    except OSError as e:
        errors.put(repr(e))
    errors.put(None)


def test_ledger_status_written_by_every_rank_at_once_never_fails_or_tears(tmp_path):
    writers = 6
    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(writers), context.Queue()
    processes = [context.Process(target=_write_statuses, args=(tmp_path / "run", barrier, errors, 200))
                 for _ in range(writers)]
    for p in processes:
        p.start()
    outcomes = [errors.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(timeout=60)

    assert outcomes == [None] * writers
    status = RunLedger(tmp_path / "run").status()
    assert status["state"] == "failed" and status["reason"].endswith("attempt 199")
    assert sorted(os.listdir(tmp_path / "run")) == ["status.json"]  # no temporary left behind


def _write_events(path: Path, events: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_ledger_events_since_reads_only_files_written_to_since(tmp_path, monkeypatch):
    ledger = RunLedger(tmp_path)
    since = 10_000.0
    old, recent = ledger.events_dir / "000001.jsonl", ledger.events_dir / "000002.jsonl"
    # An old file holding an event stamped after `since` (a clock anomaly) shows whether it was read.
    _write_events(old, [{"t": 1.0, "event": "a"}, {"t": since + 1, "event": "old-file"}])
    _write_events(recent, [{"t": since - 1, "event": "b"}, {"t": since + 2, "event": "recent-file"}])
    os.utime(old, (since - 2 * ledger_module.CLOCK_MARGIN_S,) * 2)
    os.utime(recent, (since + 5,) * 2)
    read = []
    real_read = ledger_module._read_events
    monkeypatch.setattr(ledger_module, "_read_events", lambda path: read.append(path.name) or real_read(path))

    assert [e["event"] for e in ledger.events(since=since)] == ["recent-file"]
    assert read == ["000002.jsonl"]
    # Within the clock margin a file is read, its old events filtered by time.
    os.utime(old, (since - ledger_module.CLOCK_MARGIN_S / 2,) * 2)
    assert [e["event"] for e in ledger.events(since=since)] == ["old-file", "recent-file"]
    assert len(ledger.events()) == 4


def test_ledger_round_summaries_latest_before_a_round(tmp_path):
    ledger = RunLedger(tmp_path)
    assert ledger.latest_round_summary(before=5) is None
    ledger.write_round_summary(1, {"n": 1})
    ledger.write_round_summary(3, {"n": 3})  # round 2's rank 0 died before writing one
    assert ledger.latest_round_summary(before=3) == {"n": 1}
    assert ledger.latest_round_summary(before=4) == {"n": 3}
    assert not list(ledger.summaries_dir.glob("*.partial"))
