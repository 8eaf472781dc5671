"""Fault injection for Tensile's own failure tests, driven by the TENSILE_FAULTS variables.

`TENSILE_FAULTS="crash-in-save@10,raise@7,fail-persist@6"`: kill the process between checkpoint
files of the save at step 10; raise a training error once at step 7; fail one non-zero rank's
part of the background save at step 6; `abort@5`: rank 0 aborts (SIGABRT, as NCCL's watchdog
ends a process) before step 5. `TENSILE_FAULT_ABORT_ON_COMMUNICATION_ERROR=1` makes a worker
whose collective fails abort instead of raising, as NCCL does on a timeout (a gloo run otherwise
raises). `TENSILE_FAULT_BUILD_DELAY_S` slows every non-zero rank's model build. `TENSILE_FAULT_STEP_DELAY_S` slows
every step; `TENSILE_FAULT_STEP_WORK_S` stands in for a step's compute shared by the world (each
rank sleeps that divided by the world size, so more workers are really faster, as on GPUs); `TENSILE_FAULT_PERSIST_DELAY_S` slows every background checkpoint before it writes;
`TENSILE_FAULT_TIER_BYTES_PER_S` makes the shared tier move (write, read, hash) at most that
many bytes a second, as a large checkpoint on a slow network would.
Each fault fires once per run: a marker in TENSILE_FAULTS_DIR remembers it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from tensile.checkpoint.api import FileEntry, Manifest, Tier
from tensile.fault_hooks import FaultHooks


STEP_WORK_VARIABLE = "TENSILE_FAULT_STEP_WORK_S"
"""Seconds of simulated compute per step for the whole world: each rank sleeps its share."""


class InjectedFailure(RuntimeError):
    """A deliberate, non-distributed error: counts as a real failure."""


class EnvironmentFaults(FaultHooks):
    def __init__(self, environ: Mapping[str, str]):
        self.environ = dict(environ)

    def wrap_tier(self, tier: Tier) -> Tier:
        rate = float(self.environ.get("TENSILE_FAULT_TIER_BYTES_PER_S", "0") or 0)
        return ThrottledTier(tier, rate) if rate > 0 else tier

    def before_step(self, *, step: int, rank: int, world_size: int) -> None:
        if rank == 0 and step in self._armed("raise") and self._first_time(f"raise-{step}"):
            raise InjectedFailure(f"injected failure at step {step}")
        if rank == 0 and step in self._armed("abort") and self._first_time(f"abort-{step}"):
            os.abort()
        # Stands in for a bigger model, so a test can act while a run is still in progress.
        self._sleep("TENSILE_FAULT_STEP_DELAY_S")
        # Stands in for a model whose compute dominates: the global batch's work, split evenly.
        self._sleep(STEP_WORK_VARIABLE, divided_by=world_size)

    def before_build(self, *, rank: int) -> None:
        if rank != 0:
            self._sleep("TENSILE_FAULT_BUILD_DELAY_S")

    def on_error(self, error: BaseException) -> None:
        if self.environ.get("TENSILE_FAULT_ABORT_ON_COMMUNICATION_ERROR") == "1":
            from tensile.elastic.classify import from_communication

            if from_communication(error):
                os.abort()

    def before_persist(self, *, step: int, rank: int) -> None:
        # Stands in for a slow disk or network under a background save.
        self._sleep("TENSILE_FAULT_PERSIST_DELAY_S")
        if rank != 0 and step in self._armed("fail-persist") and self._first_time(f"fail-persist-{step}"):
            raise OSError(f"injected failure of rank {rank}'s part of the background save at step {step}")

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

    def _sleep(self, variable: str, *, divided_by: int = 1) -> None:
        delay = float(self.environ.get(variable, "0") or 0) / max(1, divided_by)
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


class ThrottledTier:
    """A tier that takes len(bytes) / rate seconds for every byte it moves or hashes, and is
    otherwise the tier it wraps."""

    def __init__(self, tier: Tier, bytes_per_s: float):
        self._tier = tier
        self.bytes_per_s = bytes_per_s

    def __getattr__(self, name: str):
        return getattr(self._tier, name)

    def _move(self, nbytes: int) -> None:
        time.sleep(nbytes / self.bytes_per_s)

    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry:
        self._move(Path(source).stat().st_size)
        return self._tier.put_file(checkpoint_id, rel_path, source)

    def verify(self, manifest: Manifest, *, contents: bool = True) -> None:
        if contents:
            self._move(sum(entry.size for entry in manifest.files))
        self._tier.verify(manifest, contents=contents)

    def read_range(self, checkpoint_id: str, rel_path: str, offset: int, length: int) -> bytes:
        self._move(length)
        return self._tier.read_range(checkpoint_id, rel_path, offset, length)

    def fetch_file(self, checkpoint_id: str, rel_path: str, target: Path) -> None:
        self._tier.fetch_file(checkpoint_id, rel_path, target)
        self._move(Path(target).stat().st_size)

    def range_reader(self, manifest: Manifest, local_copies: list[Path] | None = None):
        throttled = self

        class Throttled:
            def __init__(self, inner):
                self.inner = inner

            def ranges(self, rel_path: str):
                read = self.inner.ranges(rel_path)

                def read_range(offset: int, length: int) -> bytes:
                    throttled._move(length)
                    return read(offset, length)

                return read_range

            def close(self) -> None:
                self.inner.close()

        return Throttled(self._tier.range_reader(manifest, local_copies))
