"""Fault injection for Tensile's own failure tests, driven by the TENSILE_FAULTS variables.

`TENSILE_FAULTS="crash-in-save@10,raise@7"`: kill the process between checkpoint files of the
save at step 10; raise a training error once at step 7. `TENSILE_FAULT_STEP_DELAY_S` slows
every step; `TENSILE_FAULT_PERSIST_DELAY_S` slows every background checkpoint before it writes.
Each fault fires once per run: a marker in TENSILE_FAULTS_DIR remembers it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from tensile.fault_hooks import FaultHooks


class InjectedFailure(RuntimeError):
    """A deliberate, non-distributed error: counts as a real failure."""


class EnvironmentFaults(FaultHooks):
    def __init__(self, environ: Mapping[str, str]):
        self.environ = dict(environ)

    def before_step(self, *, step: int, rank: int) -> None:
        if rank == 0 and step in self._armed("raise") and self._first_time(f"raise-{step}"):
            raise InjectedFailure(f"injected failure at step {step}")
        # Stands in for a bigger model, so a test can act while a run is still in progress.
        self._sleep("TENSILE_FAULT_STEP_DELAY_S")

    def before_persist(self) -> None:
        # Stands in for a slow disk or network under a background save.
        self._sleep("TENSILE_FAULT_PERSIST_DELAY_S")

    def after_checkpoint_file(self, *, step: int, rank: int) -> None:
        """Dies with the checkpoint half-written."""
        if rank == 0 and step in self._armed("crash-in-save") and self._first_time(f"crash-in-save-{step}"):
            os._exit(137)

    def _armed(self, kind: str) -> set[int]:
        steps = set()
        for item in filter(None, (s.strip() for s in self.environ.get("TENSILE_FAULTS", "").split(","))):
            name, _, step = item.partition("@")
            if name == kind and step.isdigit():
                steps.add(int(step))
        return steps

    def _sleep(self, variable: str) -> None:
        delay = float(self.environ.get(variable, "0") or 0)
        if delay > 0:
            time.sleep(delay)

    def _first_time(self, name: str) -> bool:
        directory = Path(self.environ.get("TENSILE_FAULTS_DIR", "."))
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(directory / f"fault-{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True
