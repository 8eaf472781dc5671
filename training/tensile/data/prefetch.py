"""Reads a step's samples on a background thread while the step before it trains.

The loop names the step it will take next; its samples (this rank's micro-batches, in one
coalesced read) and the step's count of targets arrive as a returned value when it asks for them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .shards import SampleBatch, TokenDataset


@dataclass(frozen=True, slots=True)
class StepRequest:
    """What one rank reads for one optimizer step."""

    step: int
    sample_ids: Sequence[int]
    """The whole global batch: its masks give the step's count of targets."""
    micro_batches: Sequence[Sequence[int]]
    """This rank's sample ids, one list per micro-batch (padding excluded)."""


@dataclass(frozen=True, slots=True)
class StepSamples:
    micro_batches: list[SampleBatch]
    target_count: int
    """Targets that count in the whole global batch: the step's loss normaliser."""


def read_step(dataset: TokenDataset, request: StepRequest) -> StepSamples:
    """The step's samples, read in one go so adjacent samples share a request."""
    own_ids = [sample_id for ids in request.micro_batches for sample_id in ids]
    together = dataset.read_batch(own_ids)
    micro_batches, start = [], 0
    for ids in request.micro_batches:
        end = start + len(ids)
        micro_batches.append(SampleBatch(together.tokens[start:end], together.loss_mask[start:end]))
        start = end
    return StepSamples(micro_batches, dataset.count_targets(request.sample_ids))


class PrefetchingReader:
    """Serves StepRequests, reading up to `depth` named-ahead steps in the background."""

    def __init__(self, dataset: TokenDataset, *, depth: int = 1) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.dataset = dataset
        self.depth = depth
        self._pending: OrderedDict[int, tuple[StepRequest, Future[StepSamples]]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self.waited_s = 0.0
        """Seconds the training thread spent waiting on reads (prefetched or not)."""

    def prefetch(self, request: StepRequest) -> None:
        """Starts reading a step the loop will ask for; the oldest is dropped past `depth`."""
        if self.depth == 0 or request.step in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tensile-data-prefetch")
        self._pending[request.step] = (request, self._pool.submit(read_step, self.dataset, request))
        while len(self._pending) > self.depth:
            self._pending.popitem(last=False)[1][1].cancel()

    def read(self, request: StepRequest) -> StepSamples:
        """The step's samples: the prefetched read if it asked for the same ids, else read now."""
        began = time.monotonic()
        pending = self._pending.pop(request.step, None)
        try:
            if pending is not None and pending[0] == request:
                return pending[1].result()  # a failed background read raises here, on the training thread
            return read_step(self.dataset, request)
        finally:
            self.waited_s += time.monotonic() - began

    def close(self) -> None:
        for _, future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def empty_batch(count: int, sample_length: int) -> SampleBatch:
    """Padding samples: zeros that no target of counts."""
    return SampleBatch(torch.zeros(count, sample_length, dtype=torch.long),
                       torch.zeros(count, sample_length - 1, dtype=torch.float32))
