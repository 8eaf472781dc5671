"""Elastic batch math: split a fixed global batch over whatever number of workers is present.

Every worker count from 1 to the global batch size is valid: ranks may carry uneven shares,
padded with masked samples so every rank runs the same number of micro-steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class BatchPlanError(ValueError):
    """No plan exists for this worker count (a configuration, not a transient, problem)."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    world_size: int
    global_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    shares: tuple[int, ...]
    """Real samples per rank; they sum to the global batch."""

    @property
    def padded_samples(self) -> int:
        """Masked filler samples per step, over all ranks."""
        return self.world_size * self.micro_batch_size * self.accumulation_steps - self.global_batch_size

    def rank_span(self, rank: int) -> tuple[int, int]:
        """The [start, stop) positions of this rank's samples inside the step's global batch."""
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} outside world of {self.world_size}")
        start = sum(self.shares[:rank])
        return start, start + self.shares[rank]

    def micro_batches(self, rank: int) -> list[tuple[list[int], int]]:
        """This rank's micro-batches as (global-batch positions, padding count) pairs.

        Every rank gets exactly `accumulation_steps` micro-batches of `micro_batch_size`
        slots; slots past the rank's share are padding (loss-masked).
        """
        start, stop = self.rank_span(rank)
        positions = list(range(start, stop))
        out = []
        for i in range(self.accumulation_steps):
            chunk = positions[i * self.micro_batch_size:(i + 1) * self.micro_batch_size]
            out.append((chunk, self.micro_batch_size - len(chunk)))
        return out

    def deepspeed_batch_config(self) -> dict[str, int]:
        """The plain batch settings DeepSpeed wants; its own bookkeeping counts padding."""
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.accumulation_steps,
            "train_batch_size": self.micro_batch_size * self.accumulation_steps * self.world_size,
        }

    def describe(self) -> str:
        uneven = "" if len(set(self.shares)) == 1 else f", shares {list(self.shares)}"
        pad = f", {self.padded_samples} padded" if self.padded_samples else ""
        return (f"{self.world_size} worker(s): micro-batch {self.micro_batch_size} × "
                f"{self.accumulation_steps} accumulation step(s){uneven}{pad} "
                f"= global batch {self.global_batch_size}")


def plan_batch(global_batch_size: int, micro_batch_sizes: list[int], world_size: int) -> BatchPlan:
    """Choose micro-batch and accumulation for `world_size` workers.

    Least padding first (padded slots are compute spent on nothing), then the fewest
    accumulation steps (the largest micro-batch) among the plans that pad that little.
    """
    if world_size < 1:
        raise BatchPlanError(f"world size must be >= 1, got {world_size}")
    if world_size > global_batch_size:
        raise BatchPlanError(
            f"{world_size} workers cannot share a global batch of {global_batch_size}: each needs at "
            f"least one sample; lower elastic.max_workers or raise batch.global_batch_size")
    if not micro_batch_sizes or min(micro_batch_sizes) < 1:
        raise BatchPlanError(f"micro-batch sizes must be positive, got {micro_batch_sizes}")
    base, extra = divmod(global_batch_size, world_size)
    shares = tuple(base + (1 if r < extra else 0) for r in range(world_size))
    largest_share = shares[0]
    def slots_then_steps(micro: int) -> tuple[int, int]:
        steps = math.ceil(largest_share / micro)
        return steps * micro, steps

    micro = min(sorted(set(micro_batch_sizes), reverse=True), key=slots_then_steps)
    return BatchPlan(world_size=world_size, global_batch_size=global_batch_size,
                     micro_batch_size=micro, accumulation_steps=math.ceil(largest_share / micro),
                     shares=shares)


def plans_for_range(global_batch_size: int, micro_batch_sizes: list[int],
                    min_workers: int, max_workers: int) -> list[BatchPlan]:
    """Plans for every worker count the job accepts."""
    return [plan_batch(global_batch_size, micro_batch_sizes, w) for w in range(min_workers, max_workers + 1)]
