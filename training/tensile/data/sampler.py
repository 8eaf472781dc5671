"""The global data order: which sample ids make up each optimizer step's global batch.

A pure function of (seed, epoch, step), so any set of workers agrees on it and a restart resumes it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch

# Two permutations cover a batch that straddles an epoch boundary without recomputing either.
_CACHED_EPOCHS = 2


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def epoch_permutation_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for one epoch; stable across processes, hosts and Python versions."""
    digest = hashlib.sha256(f"tensile-sampler:{seed}:{epoch}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class GlobalSampler:
    """Maps the position in an endless stream of samples to sample ids, one permutation per epoch."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int) -> None:
        _check_int("num_samples", num_samples, minimum=1)
        _check_int("global_batch_size", global_batch_size, minimum=1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.consumed_samples = 0
        self._permutations: OrderedDict[int, torch.Tensor] = OrderedDict()

    @property
    def epoch(self) -> int:
        """The epoch the next unconsumed sample belongs to."""
        return self.consumed_samples // self.num_samples

    @property
    def next_step(self) -> int:
        """The optimizer step whose batch comes next in the stream."""
        return self.consumed_samples // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of all sample ids within the given epoch."""
        _check_int("epoch", epoch, minimum=0)
        if epoch in self._permutations:
            self._permutations.move_to_end(epoch)
            return self._permutations[epoch]
        generator = torch.Generator().manual_seed(epoch_permutation_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        self._permutations[epoch] = order
        if len(self._permutations) > _CACHED_EPOCHS:
            self._permutations.popitem(last=False)
        return order

    def sample_ids_for_step(self, step: int) -> list[int]:
        """Sample ids at stream positions [step * G, (step + 1) * G), possibly spanning epochs."""
        _check_int("step", step, minimum=0)
        position = step * self.global_batch_size
        end = position + self.global_batch_size
        sample_ids: list[int] = []
        while position < end:
            epoch, offset = divmod(position, self.num_samples)
            taken = min(end - position, self.num_samples - offset)
            sample_ids.extend(self.permutation(epoch)[offset : offset + taken].tolist())
            position += taken
        return sample_ids

    def advance(self, step: int) -> None:
        """Records that the given step's batch has been consumed."""
        _check_int("step", step, minimum=0)
        self.consumed_samples = (step + 1) * self.global_batch_size

    def state_dict(self) -> dict[str, int]:
        return {
            "consumed_samples": self.consumed_samples,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the stream position; refuses a state recorded for another order or batch size."""
        for field in ("consumed_samples", "seed", "num_samples", "global_batch_size"):
            if field not in state:
                raise ValueError(f"sampler state lacks the field {field!r}; got fields {sorted(state)}")
        for field in ("seed", "num_samples", "global_batch_size"):
            if state[field] != getattr(self, field):
                raise ValueError(
                    f"sampler state has {field}={state[field]!r} but this sampler has "
                    f"{field}={getattr(self, field)!r}; resuming would change the data order"
                )
        consumed = state["consumed_samples"]
        _check_int("consumed_samples", consumed, minimum=0)
        if consumed % self.global_batch_size:
            raise ValueError(
                f"consumed_samples={consumed} is not a multiple of global_batch_size={self.global_batch_size}"
            )
        self.consumed_samples = consumed
