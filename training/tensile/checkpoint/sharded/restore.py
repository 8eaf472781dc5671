"""Loading the sharded layout at any worker count.

Each rank reads the N saved headers, plans its own slices at M workers, and reads only the byte
ranges that overlap them, into the engine's freshly built partitions; then the model weights
follow the master weights exactly as after an optimizer step. No conversion step, no second
copy, exact for every stage.
"""

from __future__ import annotations

import bisect
import io
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from tensile.checkpoint.api import CheckpointCorrupt, CheckpointIncompatible, CorruptOnLoad, RangeReader
from tensile.checkpoint.sharded.layout import META, parse_slice_key, shard_path
from tensile.checkpoint.sharded.partition import LocalSlice, ZeroPartition, engine_precision, full_shape
from tensile.checkpoint.sharded.shard_file import read_shard_header


@dataclass(frozen=True, slots=True)
class _Stored:
    start: int
    length: int
    file: str
    begin: int
    """Absolute byte offset of element `start`."""
    dtype: torch.dtype
    element_size: int


class SliceIndex:
    """Where every saved slice of every (kind, parameter) is, from the shard headers alone."""

    def __init__(self, source: RangeReader, world_size: int, *, what: str):
        self.source = source
        self.what = what
        self._by_key: dict[tuple[str, str], list[_Stored]] = {}
        for rank in range(world_size):
            rel = shard_path(rank)
            header = read_shard_header(source.ranges(rel), what=f"{what}: {rel}")
            for key, stored in header.tensors.items():
                kind, name, start = parse_slice_key(key)
                self._by_key.setdefault((kind, name), []).append(
                    _Stored(start, stored.numel, rel, stored.begin, stored.dtype, stored.element_size))
        for slices in self._by_key.values():
            slices.sort(key=lambda s: s.start)
        self._starts = {key: [s.start for s in slices] for key, slices in self._by_key.items()}
        self.bytes_read = 0

    def fill(self, kind: str, name: str, start: int, dest: torch.Tensor) -> None:
        """Copy elements [start, start + dest.numel()) of `kind` of `name` into `dest`."""
        length = dest.numel()
        slices = self._by_key.get((kind, name), [])
        first = max(0, bisect.bisect_right(self._starts.get((kind, name), []), start) - 1)
        covered = 0
        for stored in slices[first:]:
            if stored.start >= start + length:
                break
            low, high = max(start, stored.start), min(start + length, stored.start + stored.length)
            if low >= high:
                continue
            raw = self.source.ranges(stored.file)(stored.begin + (low - stored.start) * stored.element_size,
                                                  (high - low) * stored.element_size)
            self.bytes_read += len(raw)
            with warnings.catch_warnings():  # a read-only buffer is fine: it is copied at once
                warnings.simplefilter("ignore", UserWarning)
                values = torch.frombuffer(raw, dtype=stored.dtype)
            dest.narrow(0, low - start, high - low).copy_(values)
            covered += high - low
        if covered != length:
            raise CheckpointCorrupt(f"{self.what}: {kind} of {name} elements [{start}, {start + length}) "
                                    f"are not all in its shards ({covered} found)")


def read_meta(source: RangeReader, size: int, *, what: str) -> dict[str, Any]:
    raw = source.ranges(META)(0, size)
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing
        raise CheckpointCorrupt(f"{what}: unreadable {META}: {e}") from e


SAVED_PRECISION_BEFORE_IT_WAS_RECORDED = "fp32"
"""Meta files written before precision existed hold an fp32 run's state."""


def saved_precision(meta: dict[str, Any]) -> str:
    return meta.get("precision", SAVED_PRECISION_BEFORE_IT_WAS_RECORDED)


def check_parameters(meta: dict[str, Any], engine: Any, *, what: str) -> None:
    """The model being resumed must have the saved parameters, shapes and frozen set, and the
    saved dtypes when it trains in the saved precision (in another, the model's weights are cast
    while the fp32 masters the optimizer keeps stay as they are)."""
    same_precision = saved_precision(meta) == engine_precision(engine)

    def described(shape: Any, dtype: str, trainable: bool) -> tuple:
        return tuple(shape), dtype if same_precision else "(any)", trainable

    saved = {name: described(*value) for name, value in meta["parameters"].items()}
    live = {name: described(full_shape(p), str(p.dtype), p.requires_grad) for name, p in engine.module.named_parameters()}
    problems = [f"{name}: saved {saved.get(name)}, model has {live.get(name)}"
                for name in sorted(saved.keys() | live.keys()) if saved.get(name) != live.get(name)]
    if problems:
        raise CheckpointIncompatible(f"{what} holds other parameters than this model "
                                     f"(shape, dtype, trainable): {'; '.join(problems[:5])}"
                                     + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""))


@dataclass(slots=True)
class LoadStats:
    seconds: float
    bytes_read: int


def load_sharded(engine: Any, *, zero_stage: int, source: RangeReader, saved_world_size: int,
                 meta_size: int, what: str,
                 agree: Callable[[str | None], list[str | None]] = lambda finding: [finding],
                 ) -> tuple[dict[str, Any], LoadStats]:
    """Fill a freshly built engine from a sharded checkpoint saved at any worker count; every
    rank calls it (the last step gathers weights). Returns the trainer's state and stats.

    `agree(finding)` runs on every rank once its reads are done, before the first collective:
    it takes what this rank found corrupt (None: nothing) and returns every rank's finding, so
    a corrupt chunk that one rank read stops every rank, together (CorruptOnLoad)."""
    started = time.monotonic()
    finding, meta, index, partition = None, None, None, None
    try:
        meta = read_meta(source, meta_size, what=what)
        check_parameters(meta, engine, what=what)
        if meta["zero_stage"] != zero_stage:
            raise CheckpointIncompatible(f"{what} was saved with ZeRO stage {meta['zero_stage']}, this engine "
                                         f"uses stage {zero_stage}")
        index = SliceIndex(source, saved_world_size, what=what)
        partition = ZeroPartition(engine, zero_stage)
        kinds: list[str] = meta["state_kinds"]
        _create_optimizer_state(partition, meta)
        # Every rank fills its frozen parameters too: whole under ZeRO-1/2, its chunk under ZeRO-3.
        targets: Iterable[LocalSlice] = [*partition.trained_slices(kinds), *partition.frozen_slices(writer=True)]
        with torch.no_grad():
            for s in targets:
                for kind, dest in s.tensors.items():
                    index.fill(kind, s.name, s.start, dest)
    except CheckpointCorrupt as e:
        finding = str(e)
    # The reads above take as long as this rank's bytes; the gather below is a collective.
    raise_if_any_found(agree(finding), what=what)
    with torch.no_grad():
        partition.publish_master_to_model()
        for name, buffer in engine.module.named_buffers():
            if name in meta["buffers"]:
                buffer.copy_(meta["buffers"][name])
    _restore_scalars(engine, partition, meta)
    return meta["client_state"], LoadStats(time.monotonic() - started, index.bytes_read)


def raise_if_any_found(findings: list[str | None], *, what: str) -> None:
    """CorruptOnLoad naming each rank that found something, if any did (every rank raises it)."""
    found = [f"rank {rank}: {finding}" for rank, finding in enumerate(findings) if finding]
    if found:
        raise CorruptOnLoad(what, found)


def _create_optimizer_state(partition: ZeroPartition, meta: dict[str, Any]) -> None:
    """The inner optimizer creates its state lazily at its first step; build it now, in the
    order it would have, so loading can fill it."""
    kinds = set(meta["state_kinds"])
    for flat, group in partition.flat_partitions():
        state = partition.optimizer_state(flat)
        scalars = meta["group_state"].get(group, {})
        for key in meta["state_keys"]:
            if key in kinds:
                if key not in state or state[key].numel() != flat.numel():
                    state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format).detach()
            else:
                value = scalars[key]
                state[key] = value.clone() if torch.is_tensor(value) else value


def _restore_scalars(engine: Any, partition: ZeroPartition, meta: dict[str, Any]) -> None:
    inner = partition.optimizer.optimizer
    if len(inner.param_groups) != len(meta["param_groups"]):
        raise CheckpointIncompatible(f"the optimizer has {len(inner.param_groups)} param groups, the "
                                     f"checkpoint {len(meta['param_groups'])}")
    for group, saved in zip(inner.param_groups, meta["param_groups"]):
        group.update(saved)
    restore_loss_scaling(partition.optimizer, meta, engine_precision(engine))
    for key, value in meta["engine"].items():
        setattr(engine, key, value)
    if meta["lr_scheduler"] is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(meta["lr_scheduler"])


def restore_loss_scaling(optimizer: Any, meta: dict[str, Any], precision: str) -> None:
    """The loss scaler as saved (fp16's dynamic scale, its clean-step count, hysteresis), into an
    engine of the same precision. In another precision the engine keeps its own: a bf16 or fp32
    engine scales by 1, and an fp16 one resumed from either starts its scale afresh."""
    if saved_precision(meta) != precision:
        return
    for key, value in meta["loss_scaling"].items():
        setattr(optimizer, key, value)
