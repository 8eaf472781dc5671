"""Held-out loss during training: the evaluation split cut into fixed chunks, each rank forwarding
its share, and the per-sample sums added in sample order, so the loss is the same at any worker count.

Why it is the same: a chunk is the same samples in the same batch at any world size, so its
forward gives the same bits on whichever rank runs it; each sample's fp64 sum is reduced as a
vector in which only one rank holds it (x + 0 + ... + 0 is exact); and the total is added in
sample order on every rank. Only the weights can differ, and that is the training's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tensile.data import TokenDataset
from tensile.model import logits_of, token_loss_per_sample
from tensile.placement import CPU_PLACEMENT, Placement

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(tokens [B, T], sample keys [B]) -> logits [B, T, V]: the model in eval mode, without gradients."""
ReduceSum = Callable[[torch.Tensor], torch.Tensor]
"""Sums a host fp64 vector over the group's ranks and returns the result on the host."""


@dataclass(frozen=True, slots=True)
class HeldOutLoss:
    loss: float
    """Sum of every counted target's loss over the split / how many targets count."""
    loss_sum: float
    samples: int
    targets: int
    seconds: float = 0.0


def evaluation_chunks(num_samples: int, micro_batch_size: int) -> list[range]:
    """The split's samples in consecutive chunks of micro_batch_size (the last may be shorter)."""
    return [range(start, min(start + micro_batch_size, num_samples))
            for start in range(0, num_samples, micro_batch_size)]


def chunks_of_rank(chunks: Sequence[range], rank: int, world_size: int) -> list[range]:
    """Rank r forwards chunks r, r + W, r + 2W, ...: every chunk once, whatever W is."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size}")
    return list(chunks[rank::world_size])


def held_out_loss(loss_sums: Sequence[float], target_counts: Sequence[float], *, seconds: float = 0.0) -> HeldOutLoss:
    """The split's loss from each sample's loss sum and target count, added in sample order in fp64."""
    total, targets = 0.0, 0
    for loss_sum, count in zip(loss_sums, target_counts, strict=True):
        total += float(loss_sum)
        targets += int(count)
    return HeldOutLoss(loss=total / max(1, targets), loss_sum=total, samples=len(loss_sums), targets=targets,
                       seconds=seconds)


class HeldOutEvaluator:
    """Evaluates the first `max_samples` (0: all) of a held-out dataset on a worker group."""

    def __init__(self, dataset: TokenDataset, *, max_samples: int = 0, micro_batch_size: int = 8,
                 placement: Placement = CPU_PLACEMENT) -> None:
        self.dataset = dataset
        self.num_samples = min(max_samples, dataset.num_samples) if max_samples else dataset.num_samples
        self.chunks = evaluation_chunks(self.num_samples, micro_batch_size)
        self.placement = placement

    def local_sums(self, forward: Forward, *, rank: int, world_size: int) -> torch.Tensor:
        """fp64 [2, N]: this rank's samples' loss sums (row 0) and target counts (row 1), zeros elsewhere."""
        out = torch.zeros(2, self.num_samples, dtype=torch.float64)
        for chunk in chunks_of_rank(self.chunks, rank, world_size):
            ids = list(chunk)
            batch = self.dataset.read_batch(ids)
            tokens = self.placement.to_device(batch.tokens)
            mask = self.placement.to_device(batch.loss_mask)
            keys = self.placement.to_device(torch.tensor(ids, dtype=torch.long))
            with torch.no_grad():
                logits = logits_of(forward(tokens[:, :-1], keys))
                sums, counts = token_loss_per_sample(logits, tokens[:, 1:], mask)
            out[0, chunk.start:chunk.stop] = sums.double().cpu()
            out[1, chunk.start:chunk.stop] = counts.double().cpu()
        return out

    def evaluate(self, forward: Forward, *, rank: int, world_size: int, reduce_sum: ReduceSum) -> HeldOutLoss:
        """Every rank calls it at the same step; each gets the same HeldOutLoss."""
        began = time.monotonic()
        summed = reduce_sum(self.local_sums(forward, rank=rank, world_size=world_size).flatten())
        summed = summed.view(2, self.num_samples)
        return held_out_loss(summed[0].tolist(), summed[1].tolist(), seconds=time.monotonic() - began)
