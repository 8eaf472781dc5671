"""Fault injection for Tensile's own failure tests, driven by the TENSILE_FAULTS variable.

`TENSILE_FAULTS="crash-in-save@10,raise@7"`: kill the process between checkpoint files of the
save at step 10; raise a training error once at step 7. `TENSILE_FAULT_STEP_DELAY_S` slows
every step; `TENSILE_FAULT_PERSIST_DELAY_S` slows every background checkpoint before it writes. Unset in production: every hook is a no-op.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class InjectedFailure(RuntimeError):
    """A deliberate, non-distributed error: counts as a real failure."""


def _armed(kind: str) -> set[int]:
    spec = os.environ.get("TENSILE_FAULTS", "")
    steps = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, step = item.partition("@")
        if name == kind and step.isdigit():
            steps.add(int(step))
    return steps


def maybe_crash_in_save(*, step: int, rank: int) -> None:
    """Called after each file a rank uploads: dies with the checkpoint half-written."""
    if rank == 0 and step in _armed("crash-in-save") and _first_time(f"crash-in-save-{step}"):
        os._exit(137)


def maybe_raise(*, step: int, rank: int) -> None:
    if rank == 0 and step in _armed("raise") and _first_time(f"raise-{step}"):
        raise InjectedFailure(f"injected failure at step {step}")


def step_delay() -> None:
    """TENSILE_FAULT_STEP_DELAY_S stretches every step, standing in for a bigger model so a
    test can act while a run is still in progress."""
    delay = float(os.environ.get("TENSILE_FAULT_STEP_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def persist_delay() -> None:
    """TENSILE_FAULT_PERSIST_DELAY_S stands in for a slow disk or network under a background save."""
    delay = float(os.environ.get("TENSILE_FAULT_PERSIST_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def _first_time(name: str) -> bool:
    """Each fault fires once per run: a marker in TENSILE_FAULTS_DIR remembers it."""
    directory = Path(os.environ.get("TENSILE_FAULTS_DIR", "."))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / f"fault-{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True
