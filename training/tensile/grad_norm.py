"""The gradient norm that clipping divides by, the same at every worker count.

ZeRO 1–3 compute the global L2 norm from each rank's partition: DeepSpeed 0.19.8 takes a norm per
gradient piece, sums their squares on each rank in fp32, and all-reduces that fp32 partial sum.
The pieces and the order of the sums follow the partition, so 1 and 2 workers get norms an ulp
apart; whenever the norm exceeds `optimizer.grad_clip` the clip factor differs by as much, every
gradient with it, and training amplifies that (the demo: undisturbed 1- and 2-worker runs, whose
gradients are otherwise bit-identical, drifted from step 5 and ended 2.2e-4 apart in loss).

Here each rank sums the squares of its pieces in fp64 and the partial sums are all-reduced in
fp64: the result differs between partitions only at fp64 rounding (~1e-16 relative), far below
fp32's ulp (6e-8), so the norm rounded to fp32 — and with it the clip factor — is the same at any
worker count (a disagreement needs the fp64 sum within 1e-16 of an fp32 rounding boundary).
Only the norm is replaced; DeepSpeed still clips, with this norm.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

INVALID_NORM = -1.0
"""DeepSpeed's sentinel for an inf/NaN norm (its step skips or reports it)."""


def squared_sum(pieces: Iterable[torch.Tensor], *, device: torch.device | str) -> torch.Tensor:
    """The sum of the squares of these gradient pieces' elements, in fp64 on `device`."""
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for piece in pieces:
        squares += piece.detach().to(device=device, dtype=torch.float64).square().sum()
    return squares


def norm_of_squares(squares: torch.Tensor) -> torch.Tensor:
    """The fp32 norm for an fp64 sum of squares; DeepSpeed's -1 where it is inf or NaN."""
    norm = squares.sqrt().float()
    return torch.where(torch.isfinite(norm), norm, torch.full_like(norm, INVALID_NORM))


def partition_independent_norm(pieces: Iterable[torch.Tensor], *, group: Any = None,
                               device: torch.device | str = "cpu") -> torch.Tensor:
    """The L2 norm of all ranks' gradient pieces together, as an fp32 scalar on `device`:
    squares summed in fp64 per piece, across pieces and across the group's ranks (one all-reduce)."""
    squares = squared_sum(pieces, device=device)
    if dist.is_initialized():
        dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=group)
    return norm_of_squares(squares)


def install(optimizer: Any) -> bool:
    """Route a ZeRO optimizer's L2 gradient norm through partition_independent_norm.

    Returns whether it was installed: ZeRO 1–3 optimizers have `get_grad_norm_direct(gradients,
    params, norm_type)`; without ZeRO every rank holds the whole all-reduced gradient, whose norm
    does not depend on the worker count already. The infinity norm stays DeepSpeed's (a max is
    exact).
    """
    original = getattr(optimizer, "get_grad_norm_direct", None)
    if original is None:
        return False

    def get_grad_norm_direct(self: Any, gradients: list[torch.Tensor], params: list[Any],
                             norm_type: float = 2) -> torch.Tensor:
        if float(norm_type) != 2.0:
            return original(gradients, params, norm_type)
        # Stage 1/2 pad the last partition with zeros, which add nothing to a sum of squares.
        # Stage 3 names the group of its parameters' partition; stage 1/2 the data-parallel one.
        group = (self._get_param_partition_group(params[0])
                 if params and hasattr(self, "_get_param_partition_group") else self.dp_process_group)
        return partition_independent_norm(gradients, group=group, device=self.device)

    optimizer.get_grad_norm_direct = types.MethodType(get_grad_norm_direct, optimizer)
    return True
