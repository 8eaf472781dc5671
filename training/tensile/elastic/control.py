"""The control plane of one worker-group round: the small values its ranks must agree on (the
round's decision, a save's file lists, a fence) pass through the group's c10d store, in phases
whose deadline follows the work they wait for.

Why not collectives: a collective waits at most `elastic.collective_timeout_s`, which is sized to
see a silently vanished peer within a step. Verifying, loading or saving a checkpoint takes as
long as its bytes take, which at real sizes is many collective timeouts: the waiting ranks read
the wait as a lost peer, the group re-forms, and the phase starts again, forever. So every phase
whose length depends on bytes or the network runs here instead: each participant announces how
long its part may take (`expected_s`, from the bytes it moves and `elastic.min_tier_mb_per_s`)
before it starts, and the others wait up to the collective timeout plus the longest announced
part. A collective inside DeepSpeed (gathering weights after a load) is entered only once the
phase's barrier says every rank is ready, so it waits only for compute.

A participant that fails inside a phase says so (the others stop waiting at once); one that
dies takes the store's connection (rank 0, which hosts it) or its announced time with it.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any, Protocol

from tensile.errors import MembershipChange


class Store(Protocol):
    """The part of torch.distributed.Store the control plane uses."""

    def set(self, key: str, value: str | bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def check(self, keys: list[str]) -> bool: ...


class PhaseTimeout(RuntimeError):
    """A peer did not finish its part of a phase in the time it announced: it is gone or hung.
    A membership change, not a failure of this worker."""


class PeerFailed(MembershipChange, RuntimeError):
    """Another rank failed inside a phase and said so; it spends its own failure."""


POLL_S = 0.02
HOST_RANK = 0
"""torchrun's per-round store is served by rank 0's process."""


def default_store() -> Store:
    """The store torch.distributed's default group was made with (torchrun's per-round store).
    `_get_default_store` is private in torch 2.13; tests/training/elastic/test_control.py
    fails if it goes away."""
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


class ControlPlane:
    def __init__(self, store: Store, *, rank: int, world_size: int, base_timeout_s: float,
                 tier_bytes_per_s: float, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.base_timeout_s = base_timeout_s
        self.tier_bytes_per_s = tier_bytes_per_s
        self.clock = clock
        self._calls: dict[str, int] = {}

    def seconds_for(self, nbytes: float) -> float:
        """How long moving `nbytes` to or from the tier may take at the slowest healthy rate."""
        return nbytes / self.tier_bytes_per_s

    def begin(self, name: str, *, expected_s: float = 0.0) -> "Phase":
        """Start phase `name` on this rank, announcing that its part takes up to `expected_s`.
        Every rank begins the same phases in the same order."""
        number = self._calls.get(name, 0)
        self._calls[name] = number + 1
        return Phase(self, f"tensile/{name}/{number}", name, expected_s)


class Phase:
    """One phase: `gather`, `broadcast` and `barrier` inside it wait under its deadline. Used as
    a context manager, an exception inside tells the other ranks at once."""

    def __init__(self, plane: ControlPlane, key: str, name: str, expected_s: float):
        self.plane = plane
        self.key = key
        self.name = name
        self._expected_s = 0.0
        self._steps = 0
        self.extend(expected_s)

    # ---- announcing -----------------------------------------------------------------------
    def extend(self, seconds: float) -> None:
        """This rank's part will take `seconds` longer than announced so far."""
        self._expected_s += max(0.0, seconds)
        self.plane.store.set(f"{self.key}/eta/{self.plane.rank}", repr(self._expected_s))

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and not isinstance(error, (PhaseTimeout, PeerFailed)):
            self.plane.store.set(f"{self.key}/failed",
                                 f"rank {self.plane.rank} failed: {type(error).__name__}: {error}"[:500])

    # ---- agreeing -------------------------------------------------------------------------
    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        step = self._next_step()
        self.plane.store.set(f"{step}/{self.plane.rank}", pickle.dumps(value))
        keys = [f"{step}/{rank}" for rank in range(self.plane.world_size)]
        self._wait(keys)
        values = [pickle.loads(self.plane.store.get(key)) for key in keys]
        self._leave(step)
        return values

    def broadcast(self, value: Any = None, *, src: int = 0) -> Any:
        """`src`'s value, on every rank (the others' `value` is ignored)."""
        step = self._next_step()
        if self.plane.rank == src:
            self.plane.store.set(step, pickle.dumps(value))
        else:
            self._wait([step])
            value = pickle.loads(self.plane.store.get(step))
        self._leave(step)
        return value

    def barrier(self) -> None:
        """Returns once every rank has reached it."""
        self.gather(None)

    def _leave(self, step: str) -> None:
        """The store lives in the host rank's process (rank 0): it leaves an exchange only once
        every other rank has read what it needed, or its exit could cut them off mid-read."""
        plane = self.plane
        if plane.rank != HOST_RANK:
            plane.store.set(f"{step}/read/{plane.rank}", b"")
            return
        self._wait([f"{step}/read/{rank}" for rank in range(plane.world_size) if rank != HOST_RANK])

    def _next_step(self) -> str:
        self._steps += 1
        return f"{self.key}/{self._steps}"

    def _wait(self, keys: list[str]) -> None:
        plane, started = self.plane, self.plane.clock()
        allowed = plane.base_timeout_s + self._expected_s
        while not plane.store.check(keys):
            failed = self._failures()
            if failed:
                raise PeerFailed(f"{self.name}: {failed}")
            elapsed = plane.clock() - started
            if elapsed > allowed:
                allowed = plane.base_timeout_s + self._longest_announced()
                if elapsed > allowed:
                    missing = [k.rsplit("/", 1)[-1] for k in keys if not plane.store.check([k])]
                    raise PhaseTimeout(
                        f"{self.name}: no word from rank(s) {', '.join(missing)} after {elapsed:.1f} s "
                        f"(they announced {self._longest_announced():.1f} s of work; "
                        f"collective_timeout_s is {plane.base_timeout_s:g} s)")
            time.sleep(POLL_S)

    def _longest_announced(self) -> float:
        plane, longest = self.plane, 0.0
        for rank in range(plane.world_size):
            key = f"{self.key}/eta/{rank}"
            if plane.store.check([key]):
                longest = max(longest, float(plane.store.get(key)))
        return longest

    def _failures(self) -> str:
        key = f"{self.key}/failed"
        return self.plane.store.get(key).decode(errors="replace") if self.plane.store.check([key]) else ""
