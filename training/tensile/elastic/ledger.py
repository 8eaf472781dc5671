"""The run's ledger on the shared tier: an event log, one record per worker-group round,
the failure budget, and the run's final status.

Tensile, not torchrun, owns the failure budget: torchrun counts every restart, membership
changes included; the ledger counts a round's real failure once, whichever ranks saw it.

The ledger lives on NFS (EFS), where appends with O_APPEND from several clients may interleave
or overwrite each other, and where a directory listing may be served stale from the client's
cache. So each process appends its events to a file of its own, `events/<n>.jsonl`, whose number
it claimed by exclusive create, and readers merge every file by time. Names are found by probing
past the listed ones (a named lookup revalidates where a cached listing may not); numbers are
claimed consecutively, so the first missing name ends them. `events.jsonl`, the single shared
file older versions appended to, is still read and merged in.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tensile.shared_fs import numbered

_writers_lock = threading.RLock()
_writers: dict[Path, tuple[int, Path]] = {}
"""This process's events file per events directory, with the pid that claimed it (a forked
child claims its own)."""


def _reset_after_fork() -> None:
    global _writers_lock
    _writers_lock = threading.RLock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_after_fork)


def _event_file_number(name: str) -> int | None:
    stem, dot, suffix = name.partition(".")
    return int(stem) if dot and suffix == "jsonl" and stem.isdigit() else None


def _event_file_name(number: int) -> str:
    return f"{number:06d}.jsonl"


def _round_number(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _summary_name(number: int) -> str:
    return f"{number}.json"


def _summary_number(name: str) -> int | None:
    stem, dot, suffix = name.partition(".")
    return int(stem) if dot and suffix == "json" and stem.isdigit() else None


CLOCK_MARGIN_S = 300.0
"""How far the file server's clock (a file's modification time) and a writer's clock (an event's
`t`) may disagree before `events(since=…)` could skip a file it should read."""


def _modified_after(path: Path, t: float) -> bool:
    try:
        return path.stat().st_mtime >= t
    except FileNotFoundError:
        return False


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a killed writer
    return out


class RunLedger:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.events_dir = self.run_dir / "events"
        self.events_path = self.run_dir / "events.jsonl"
        """The single events file of older versions: read, never written."""
        self.rounds_dir = self.run_dir / "rounds"
        self.failures_dir = self.run_dir / "failures"
        self.status_path = self.run_dir / "status.json"
        self.summaries_dir = self.run_dir / "round-summaries"

    # Events: one JSON object a line, in a file only this process appends to.
    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "event": event, **fields}, sort_keys=True) + "\n"
        with _writers_lock:
            try:
                fd = os.open(self.writer_path(), os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:  # the run directory was removed since: claim afresh
                _writers.pop(self.events_dir.absolute(), None)
                fd = os.open(self.writer_path(), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def writer_path(self) -> Path:
        """This process's events file, claimed (created exclusively) on first use."""
        key = self.events_dir.absolute()
        with _writers_lock:
            pid, path = _writers.get(key, (None, None))
            if pid == os.getpid() and path is not None:
                return path
            self.events_dir.mkdir(parents=True, exist_ok=True)
            taken = numbered(self.events_dir, _event_file_name, _event_file_number)
            number = taken[-1] if taken else 0
            while True:
                number += 1
                path = self.events_dir / _event_file_name(number)
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    continue  # another process claimed it since the probe
                _writers[key] = (os.getpid(), path)
                return path

    def event_files(self) -> list[Path]:
        """Every events file, the old single file first, then per-writer files by number."""
        numbers = numbered(self.events_dir, _event_file_name, _event_file_number)
        return [self.events_path] + [self.events_dir / _event_file_name(n) for n in numbers]

    def events(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every file's events merged by time; each file's own order is kept, and ties go to the
        older file. With `since`, only the events after it, and only files written to within
        CLOCK_MARGIN_S of it are read: files are append-only, so one last modified well before
        `since` holds nothing newer."""
        paths = self.event_files()
        if since is not None:
            paths = [path for path in paths if _modified_after(path, since - CLOCK_MARGIN_S)]
        streams = [_read_events(path) for path in paths]
        merged = heapq.merge(*streams, key=lambda e: e.get("t", 0.0))
        return [e for e in merged if e.get("t", 0.0) > since] if since is not None else list(merged)

    # Round summaries: what a round start computed from the events so far (the run history),
    # so the next start reads only the events since.
    def write_round_summary(self, round_number: int, summary: dict[str, Any]) -> None:
        self.summaries_dir.mkdir(parents=True, exist_ok=True)
        partial = self.summaries_dir / f".{round_number}.{uuid.uuid4().hex}.partial"
        partial.write_text(json.dumps(summary))
        os.replace(partial, self.summaries_dir / _summary_name(round_number))

    def latest_round_summary(self, before: int) -> dict[str, Any] | None:
        """The newest summary of a round before `before`; None if there is none. A listing served
        stale only makes it an older one, which is as correct, just more events to read."""
        for number in reversed(numbered(self.summaries_dir, _summary_name, _summary_number)):
            if number < before:
                try:
                    return json.loads((self.summaries_dir / _summary_name(number)).read_text())
                except (FileNotFoundError, ValueError):
                    continue
        return None

    def open_round(self, details: dict[str, Any]) -> int:
        """Claim the next round number (exclusive create); called by the group's rank 0."""
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        number = self.last_round()
        while True:
            number += 1
            try:
                fd = os.open(self.rounds_dir / str(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # a rival group took it; take the next
            with os.fdopen(fd, "w") as f:
                json.dump(details, f)
            return number

    def record_failure(self, round_number: int | str, details: dict[str, Any]) -> bool:
        """Spend one failure for this round; False if the round already spent one."""
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.failures_dir / f"round-{round_number}.json",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(details, f)
        return True

    def failure_on_record(self, round_number: int | str, *, wait_s: float = 0.0, poll_s: float = 0.1) -> bool:
        """This round has spent its failure already (some rank's own code failed), waiting up to
        wait_s for it to."""
        path, deadline = self.failures_dir / f"round-{round_number}.json", time.monotonic() + wait_s
        while not path.exists():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def last_round(self) -> int:
        return max(numbered(self.rounds_dir, str, _round_number), default=0)

    def failures_spent(self) -> int:
        if not self.failures_dir.exists():
            return 0
        return sum(1 for p in self.failures_dir.iterdir() if p.suffix == ".json")

    def write_status(self, state: str, **fields: Any) -> None:
        """The run's outcome: completed, or failed (budget spent). Read by the launchers."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A name of its own: when every rank fails at once, each writes its own and renames it.
        partial = self.run_dir / f".status.{uuid.uuid4().hex}.partial"
        partial.write_text(json.dumps({"state": state, "t": time.time(), **fields}))
        os.replace(partial, self.status_path)

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
