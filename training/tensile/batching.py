"""Elastic batch math: split a fixed global batch over whatever number of processes is present.

The world size is nodes × processes per node; every world size from 1 to the global batch size
is valid: ranks may carry uneven shares, padded with masked samples so every rank runs the same
number of micro-steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class BatchPlanError(ValueError):
    """No plan exists for this world size (a configuration, not a transient, problem)."""


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
        return (f"world size {self.world_size}: micro-batch {self.micro_batch_size} × "
                f"{self.accumulation_steps} accumulation step(s){uneven}{pad} "
                f"= global batch {self.global_batch_size}")


def plan_batch(global_batch_size: int, micro_batch_sizes: list[int], world_size: int) -> BatchPlan:
    """Choose micro-batch and accumulation for `world_size` processes (all nodes' together).

    Least padding first (padded slots are compute spent on nothing), then the fewest
    accumulation steps (the largest micro-batch) among the plans that pad that little.
    """
    if world_size < 1:
        raise BatchPlanError(f"world size must be >= 1, got {world_size}")
    if world_size > global_batch_size:
        raise BatchPlanError(
            f"world size {world_size} (nodes × processes per node) cannot share a global batch of "
            f"{global_batch_size}: each process needs at least one sample; lower elastic.max_nodes or "
            f"elastic.processes_per_node, or raise batch.global_batch_size")
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


def plans_for_range(global_batch_size: int, micro_batch_sizes: list[int], min_nodes: int, max_nodes: int,
                    processes_per_node: int = 1) -> list[BatchPlan]:
    """Plans for every node count the job accepts, at that many nodes × processes_per_node."""
    return [plan_batch(global_batch_size, micro_batch_sizes, nodes * processes_per_node)
            for nodes in range(min_nodes, max_nodes + 1)]
