"""The sharded layout, as pure planning: which slice of each parameter a rank holds under ZeRO
1–3, and how a checkpoint names its files and slices.

A checkpoint stores every rank's slices keyed by what they are (parameter name, element range
within the flattened parameter), not by where a given world size put them. Saving walks this
rank's slices; loading at another worker count walks the new rank's slices and fills each from
whichever saved slices overlap it. Nothing here touches DeepSpeed (partition.py reads the live
layout off it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

META = "meta.pt"
"""Rank 0's file: optimizer hyperparameters and step counts, scheduler, engine counters, loss
scaler, buffers, the trainer's own state."""
SHARDS = "shards"
PARAM = "param"
"""The kind holding values: fp32 master weights of trained parameters, frozen ones as they are."""


def shard_path(rank: int) -> str:
    """Rank `rank`'s safetensors file, relative to the checkpoint's directory."""
    return f"{SHARDS}/rank-{rank:05d}.safetensors"


def slice_key(kind: str, name: str, start: int) -> str:
    """A slice's tensor name in its shard file: `<kind>/<parameter>@<first element>`."""
    return f"{kind}/{name}@{start}"


def parse_slice_key(key: str) -> tuple[str, str, int]:
    kind, _, rest = key.partition("/")
    name, _, start = rest.rpartition("@")
    return kind, name, int(start)


@dataclass(frozen=True, slots=True)
class Slice:
    """Elements [start, start + length) of one flattened parameter, held by one rank at
    [offset, offset + length) of its flat partition `group`."""

    param: int
    """Index into the parameter list the plan was made from."""
    start: int
    length: int
    group: int
    offset: int


def stage12_slices(numels: Sequence[int], offsets: Sequence[int], partition_size: int, rank: int,
                   group: int = 0) -> list[Slice]:
    """ZeRO-1/2: a group's parameters sit at `offsets` in one flat buffer (with alignment
    padding between them); rank r owns the flat range [r·P, (r+1)·P)."""
    low, high = rank * partition_size, (rank + 1) * partition_size
    out = []
    for index, (numel, offset) in enumerate(zip(numels, offsets)):
        begin, end = max(offset, low), min(offset + numel, high)
        if begin < end:
            out.append(Slice(param=index, start=begin - offset, length=end - begin, group=group,
                             offset=begin - low))
    return out


def stage3_slices(numels: Sequence[int], world_size: int, rank: int, group: int = 0) -> list[Slice]:
    """ZeRO-3: each parameter is cut into `world_size` chunks of ceil(numel / world) elements
    (the last padded); a rank's flat partition is its chunks, parameter after parameter."""
    out, offset = [], 0
    for index, numel in enumerate(numels):
        chunk = -(-numel // world_size)
        start = rank * chunk
        length = max(0, min(chunk, numel - start))
        if length:
            out.append(Slice(param=index, start=start, length=length, group=group, offset=offset))
        offset += chunk
    return out
