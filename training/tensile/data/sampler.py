"""The global data order: which sample ids make up each optimizer step's global batch.

A pure function of (seed, epoch, step), so any set of workers agrees on it and a restart resumes it.
New runs use a keyed Feistel bijection of [0, n) (memory independent of n); checkpoints whose
sampler state predates it keep the materialised torch.randperm order they trained with.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

SAMPLER_STATE_VERSION = 2
"""Version 1 (no "version" field) is the randperm order; version 2 names its permutation."""
FEISTEL = "feistel"
RANDPERM = "randperm"
PERMUTATIONS = (FEISTEL, RANDPERM)
_FEISTEL_ROUNDS = 6

# Two permutations cover a batch that straddles an epoch boundary without recomputing either.
_CACHED_EPOCHS = 2


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def epoch_permutation_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for one epoch; stable across processes, hosts and Python versions."""
    digest = hashlib.sha256(f"tensile-sampler:{seed}:{epoch}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit (uint64, wrapping)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class FeistelPermutation:
    """A bijection of [0, n) keyed by (seed, epoch), evaluated per index, never materialised.

    A balanced Feistel network over 2·h bits (the smallest 4**h >= n) is a bijection of
    [0, 4**h) whatever its round function; cycle-walking (applying it again while the result is
    >= n) restricts it to a bijection of [0, n). 4**h < 4n, so a walk takes under 4 rounds on average.
    """

    def __init__(self, num_samples: int, seed: int, epoch: int) -> None:
        _check_int("num_samples", num_samples, minimum=1)
        self.num_samples = num_samples
        self.half_bits = max(1, ((num_samples - 1).bit_length() + 1) // 2)
        self._half_mask = np.uint64((1 << self.half_bits) - 1)
        # One 64-bit key per round, stable across processes, hosts and Python versions.
        digest = hashlib.sha512(f"tensile-feistel:{seed}:{epoch}".encode("ascii")).digest()
        self._round_keys = np.frombuffer(digest, dtype="<u8")[:_FEISTEL_ROUNDS].astype(np.uint64)

    def _network(self, values: np.ndarray) -> np.ndarray:
        bits = np.uint64(self.half_bits)
        left, right = values >> bits, values & self._half_mask
        for key in self._round_keys:
            left, right = right, left ^ (_mix64(right ^ key) & self._half_mask)
        return (left << bits) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The sample id at each position (int64 array in [0, n))."""
        values = np.asarray(positions, dtype=np.uint64)
        if values.size and int(values.max()) >= self.num_samples:
            raise IndexError(f"positions must lie in [0, {self.num_samples}), got {int(values.max())}")
        values = self._network(values)
        outside = values >= np.uint64(self.num_samples)
        while outside.any():
            values[outside] = self._network(values[outside])
            outside = values >= np.uint64(self.num_samples)
        return values.astype(np.int64)


class GlobalSampler:
    """Maps the position in an endless stream of samples to sample ids, one permutation per epoch.

    permutation="feistel" (new runs) computes each id from its position; "randperm" (the order of
    checkpoints written before it, chosen by load_state_dict) holds two epochs' permutations.
    """

    def __init__(self, num_samples: int, global_batch_size: int, seed: int, *, permutation: str = FEISTEL) -> None:
        _check_int("num_samples", num_samples, minimum=1)
        _check_int("global_batch_size", global_batch_size, minimum=1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if permutation not in PERMUTATIONS:
            raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.permutation_kind = permutation
        self.consumed_samples = 0
        self._permutations: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._feistel: FeistelPermutation | None = None
        self._feistel_epoch = -1

    @property
    def epoch(self) -> int:
        """The epoch the next unconsumed sample belongs to."""
        return self.consumed_samples // self.num_samples

    @property
    def next_step(self) -> int:
        """The optimizer step whose batch comes next in the stream."""
        return self.consumed_samples // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of all sample ids within the given epoch (materialised: tests, small datasets)."""
        _check_int("epoch", epoch, minimum=0)
        if self.permutation_kind == FEISTEL:
            return torch.from_numpy(self._epoch_feistel(epoch)(np.arange(self.num_samples)))
        return self._randperm(epoch)

    def _epoch_feistel(self, epoch: int) -> FeistelPermutation:
        if self._feistel is None or self._feistel_epoch != epoch:
            self._feistel, self._feistel_epoch = FeistelPermutation(self.num_samples, self.seed, epoch), epoch
        return self._feistel

    def _ids(self, epoch: int, start: int, stop: int) -> list[int]:
        if self.permutation_kind == FEISTEL:
            return self._epoch_feistel(epoch)(np.arange(start, stop)).tolist()
        return self._randperm(epoch)[start:stop].tolist()

    def _randperm(self, epoch: int) -> torch.Tensor:
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
            sample_ids.extend(self._ids(epoch, offset, offset + taken))
            position += taken
        return sample_ids

    def advance(self, step: int) -> None:
        """Records that the given step's batch has been consumed."""
        _check_int("step", step, minimum=0)
        self.consumed_samples = (step + 1) * self.global_batch_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": SAMPLER_STATE_VERSION,
            "permutation": self.permutation_kind,
            "consumed_samples": self.consumed_samples,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the stream position and the permutation it was recorded with (a state without
        a version is the randperm order's); refuses a state for another order or batch size."""
        for field in ("consumed_samples", "seed", "num_samples", "global_batch_size"):
            if field not in state:
                raise ValueError(f"sampler state lacks the field {field!r}; got fields {sorted(state)}")
        for field in ("seed", "num_samples", "global_batch_size"):
            if state[field] != getattr(self, field):
                raise ValueError(
                    f"sampler state has {field}={state[field]!r} but this sampler has "
                    f"{field}={getattr(self, field)!r}; resuming would change the data order"
                )
        version = state.get("version", 1)
        if version not in (1, SAMPLER_STATE_VERSION):
            raise ValueError(f"sampler state has version {version!r}; this code reads versions 1 and "
                             f"{SAMPLER_STATE_VERSION}")
        permutation = state.get("permutation", RANDPERM) if version == SAMPLER_STATE_VERSION else RANDPERM
        if permutation not in PERMUTATIONS:
            raise ValueError(f"sampler state has permutation {permutation!r}; expected one of {PERMUTATIONS}")
        consumed = state["consumed_samples"]
        _check_int("consumed_samples", consumed, minimum=0)
        if consumed % self.global_batch_size:
            raise ValueError(
                f"consumed_samples={consumed} is not a multiple of global_batch_size={self.global_batch_size}"
            )
        self.consumed_samples = consumed
        if permutation != self.permutation_kind:
            self.permutation_kind = permutation
            self._permutations.clear()
            self._feistel = None
