"""The clipping norm is the same however the gradient is partitioned over ranks (tensile/grad_norm.py)."""

from __future__ import annotations

import torch

from tensile.grad_norm import INVALID_NORM, norm_of_squares, squared_sum


def _partitions(vector: torch.Tensor, tensor_sizes: list[int], ranks: int) -> list[list[torch.Tensor]]:
    """The pieces each rank holds when ZeRO cuts the flat gradient into `ranks` equal parts,
    splitting the tensors that straddle a boundary (as stage 1/2 do)."""
    tensors = list(vector.split(tensor_sizes))
    bounds = [round(i * vector.numel() / ranks) for i in range(ranks + 1)]
    pieces: list[list[torch.Tensor]] = [[] for _ in range(ranks)]
    start = 0
    for tensor in tensors:
        end = start + tensor.numel()
        for rank in range(ranks):
            lo, hi = max(start, bounds[rank]), min(end, bounds[rank + 1])
            if lo < hi:
                pieces[rank].append(tensor[lo - start:hi - start])
        start = end
    return pieces


def _fp32_partial_sums(pieces_per_rank: list[list[torch.Tensor]]) -> torch.Tensor:
    """DeepSpeed 0.19.8's stage 1/2 norm: per-piece fp64 norms, squared and summed per rank, cast
    to fp32, the fp32 partial sums all-reduced (here: added in rank order)."""
    total = torch.zeros((), dtype=torch.float32)
    for pieces in pieces_per_rank:
        norms = torch.stack([torch.linalg.vector_norm(p.double()) for p in pieces])
        total = total + norms.pow(2).sum().float()
    return total.sqrt()


def _ours(pieces_per_rank: list[list[torch.Tensor]]) -> torch.Tensor:
    # What the all-reduce adds up: each rank's fp64 sum, in rank order.
    return norm_of_squares(sum(squared_sum(pieces, device="cpu") for pieces in pieces_per_rank))


def test_the_norm_is_bit_identical_at_any_worker_count():
    generator = torch.Generator().manual_seed(0)
    sizes = [24_576, 96, 96, 27_648, 288, 9_216, 96, 36_864, 384, 36_864, 96]
    deepspeed_disagreed = 0
    for _ in range(50):
        vector = torch.randn(sum(sizes), generator=generator) * torch.rand((), generator=generator)
        ours = {ranks: _ours(_partitions(vector, sizes, ranks)) for ranks in (1, 2, 3, 4, 8)}
        assert len({value.item() for value in ours.values()}) == 1, ours
        theirs = {_fp32_partial_sums(_partitions(vector, sizes, ranks)).item() for ranks in (1, 2, 3, 4, 8)}
        deepspeed_disagreed += len(theirs) > 1
    # The failure this replaces: fp32 partial sums give a worker-count-dependent norm.
    print(f"DeepSpeed's norm depended on the worker count for {deepspeed_disagreed} of 50 gradients")
    assert deepspeed_disagreed >= 10, deepspeed_disagreed


def test_an_overflowed_gradient_gives_the_invalid_sentinel():
    assert norm_of_squares(squared_sum([torch.tensor([float("inf"), 1.0])], device="cpu")).item() == INVALID_NORM
    assert norm_of_squares(squared_sum([torch.tensor([float("nan")])], device="cpu")).item() == INVALID_NORM
    assert norm_of_squares(squared_sum([], device="cpu")).item() == 0.0
