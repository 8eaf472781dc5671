"""The run's ledger on the shared tier: an event log, one record per worker-group round,
the failure budget, and the run's final status.

Tensile, not torchrun, owns the failure budget: torchrun counts every restart, membership
changes included; the ledger counts a round's real failure once, whichever ranks saw it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class RunLedger:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.events_path = self.run_dir / "events.jsonl"
        self.rounds_dir = self.run_dir / "rounds"
        self.failures_dir = self.run_dir / "failures"
        self.status_path = self.run_dir / "status.json"

    # Events: one JSON object a line. Appends under O_APPEND are atomic for lines this short.
    def record(self, event: str, **fields: Any) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"t": time.time(), "event": event, **fields}, sort_keys=True) + "\n"
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a killed writer
        return out

    def open_round(self, details: dict[str, Any]) -> int:
        """Claim the next round number (exclusive create); called by the group's rank 0."""
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        while True:
            taken = [int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit()]
            number = max(taken, default=0) + 1
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

    def last_round(self) -> int:
        if not self.rounds_dir.exists():
            return 0
        return max((int(p.name) for p in self.rounds_dir.iterdir() if p.name.isdigit()), default=0)

    def failures_spent(self) -> int:
        if not self.failures_dir.exists():
            return 0
        return sum(1 for p in self.failures_dir.iterdir() if p.suffix == ".json")

    def write_status(self, state: str, **fields: Any) -> None:
        """The run's outcome: completed, or failed (budget spent). Read by the launchers."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        partial = self.status_path.with_suffix(".partial")
        partial.write_text(json.dumps({"state": state, "t": time.time(), **fields}))
        os.replace(partial, self.status_path)

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
