"""The one seam where Tensile's own failure tests reach into a real run (real processes, so a
fixture cannot patch them): the places product code lets a fault in, and nothing by default.

`tensile.testing.faults` implements them from the TENSILE_FAULTS* variables; the worker process
(`tensile.worker`) imports it only when one of them is set, so a production run never imports
test code.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class FaultHooks:
    """Called by the trainer and the checkpointer at the named points; every one does nothing."""

    def wrap_tier(self, tier: T) -> T:
        """The shared tier the trainer works through (a test may slow it)."""
        return tier

    def before_step(self, *, step: int, rank: int, world_size: int) -> None:
        """At the start of every training step (a test may raise, or stretch the step, or stand
        in for compute that the world shares)."""

    def before_build(self, *, rank: int) -> None:
        """Before a rank builds its model (a test may make one rank slow)."""

    def on_error(self, error: BaseException) -> None:
        """When an error reaches the worker, before it is classified (a test may abort there, as
        NCCL's watchdog ends a process whose collective timed out)."""

    def before_persist(self, *, step: int, rank: int) -> None:
        """On the background thread, before a background save writes anything."""

    def after_checkpoint_file(self, *, step: int, rank: int) -> None:
        """After each file a rank has uploaded to the shared tier, mid-save."""


NO_FAULTS = FaultHooks()
