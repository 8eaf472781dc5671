"""The sharded layout's slice planning and range reads, for every (N, M) in 1..8 and every stage,
against a reference consolidation. No DeepSpeed here: the flat partitions are laid out the way
DeepSpeed 0.19.8 lays them out (the real-process tests check it against DeepSpeed itself)."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors import safe_open

from tensile.checkpoint import CheckpointCorrupt
from tensile.checkpoint.ranges import DirectoryRanges
from tensile.checkpoint.sharded.layout import Slice, parse_slice_key, shard_path, slice_key, stage3_slices, stage12_slices
from tensile.checkpoint.sharded.restore import SliceIndex
from tensile.checkpoint.sharded.shard_file import read_shard_header, write_shard_file

# Sizes chosen to straddle partition boundaries: tiny (fewer elements than workers), odd, large.
NUMELS = [7, 1, 130, 64, 3, 257, 2]
KINDS = ["param", "exp_avg", "exp_avg_sq"]
ALIGNMENT = 4
PAD = float("nan")


def stage12_layout(numels: list[int], world: int) -> tuple[list[int], int]:
    """Offsets of each parameter in the flat buffer and the partition size, as DeepSpeed builds
    them: each parameter but the last padded to the alignment, the buffer to a multiple of
    world × alignment."""
    offsets, cursor = [], 0
    for i, numel in enumerate(numels):
        offsets.append(cursor)
        cursor += numel
        if i < len(numels) - 1:
            cursor += -cursor % ALIGNMENT
    cursor += -cursor % (world * ALIGNMENT)
    return offsets, cursor // world


def plan(stage: int, world: int, rank: int) -> tuple[list[Slice], int]:
    """This rank's slices and the size of its flat partition."""
    if stage == 3:
        slices = stage3_slices(NUMELS, world, rank)
        return slices, sum(-(-n // world) for n in NUMELS)
    offsets, partition = stage12_layout(NUMELS, world)
    return stage12_slices(NUMELS, offsets, partition, rank), partition


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"{kind}/p{i}": torch.randn(n, generator=g) for kind in KINDS for i, n in enumerate(NUMELS)}


def save(tmp_path, reference, stage: int, world: int):
    directory = tmp_path / f"s{stage}-n{world}"
    (directory / "shards").mkdir(parents=True)
    for rank in range(world):
        slices, size = plan(stage, world, rank)
        tensors = {}
        for kind in KINDS:
            flat = torch.full((size,), PAD)  # padding must never be read back
            for s in slices:
                flat[s.offset:s.offset + s.length] = reference[f"{kind}/p{s.param}"][s.start:s.start + s.length]
            for s in slices:
                tensors[slice_key(kind, f"p{s.param}", s.start)] = flat.narrow(0, s.offset, s.length)
        write_shard_file(directory / shard_path(rank), tensors, {"rank": str(rank)})
    return directory


CASES = list(itertools.product([1, 2, 3], range(1, 9), range(1, 9)))


@pytest.mark.parametrize(("stage", "saved", "loaded"), CASES, ids=[f"zero{s}-{n}to{m}" for s, n, m in CASES])
def test_every_rank_reads_back_exactly_its_partition(tmp_path, reference, stage, saved, loaded):
    source = DirectoryRanges(save(tmp_path, reference, stage, saved))
    try:
        index = SliceIndex(source, saved, what="test")
        covered = {name: torch.zeros(n, dtype=torch.int32) for name, n in
                   ((f"p{i}", n) for i, n in enumerate(NUMELS))}
        for rank in range(loaded):
            slices, size = plan(stage, loaded, rank)
            before = index.bytes_read
            for kind in KINDS:
                flat = torch.full((size,), -1.0)
                for s in slices:
                    index.fill(kind, f"p{s.param}", s.start, flat.narrow(0, s.offset, s.length))
                expected = torch.full((size,), -1.0)
                for s in slices:
                    expected[s.offset:s.offset + s.length] = reference[f"{kind}/p{s.param}"][s.start:s.start + s.length]
                assert torch.equal(flat, expected), f"rank {rank} {kind}"
            # Range reads: a rank reads its own slices' bytes and nothing more.
            assert index.bytes_read - before == 4 * len(KINDS) * sum(s.length for s in slices)
            for s in slices:
                covered[f"p{s.param}"][s.start:s.start + s.length] += 1
        assert all(bool((c == 1).all()) for c in covered.values()), "every element owned by exactly one rank"
    finally:
        source.close()


def test_zero12_plan_follows_deepspeed_offsets_not_a_plain_concatenation():
    # Parameters of 5 and 3 elements with 4-aligned offsets: [0..5) pad [8..11), 2 ranks of 6.
    assert stage12_slices([5, 3], [0, 8], 6, 0) == [Slice(param=0, start=0, length=5, group=0, offset=0)]
    assert stage12_slices([5, 3], [0, 8], 6, 1) == [Slice(param=1, start=0, length=3, group=0, offset=2)]


def test_zero3_plan_gives_each_rank_a_padded_chunk_of_every_parameter():
    # 5 elements over 2 ranks: chunks of 3; rank 1 holds 2 real elements and one of padding.
    assert stage3_slices([5, 1], 2, 1) == [Slice(param=0, start=3, length=2, group=0, offset=0)]
    assert stage3_slices([5, 1], 2, 0) == [Slice(param=0, start=0, length=3, group=0, offset=0),
                                           Slice(param=1, start=0, length=1, group=0, offset=3)]


def test_shard_files_are_plain_safetensors(tmp_path, reference):
    directory = save(tmp_path, reference, 3, 2)
    with safe_open(str(directory / shard_path(1)), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata() == {"rank": "1"}
        kind, name, start = parse_slice_key(keys[0])
        values = f.get_tensor(keys[0])
    assert torch.equal(values, reference[f"{kind}/{name}"][start:start + values.numel()])


def test_a_missing_slice_is_corrupt_naming_the_parameter_and_range(tmp_path, reference):
    directory = save(tmp_path, reference, 2, 2)
    (directory / shard_path(1)).unlink()
    write_shard_file(directory / shard_path(1), {}, {})  # rank 1's slices are gone
    source = DirectoryRanges(directory)
    try:
        index = SliceIndex(source, 2, what="checkpoint step-1")
        with pytest.raises(CheckpointCorrupt, match=r"checkpoint step-1: exp_avg of p5 elements \[0, 257\)"):
            index.fill("exp_avg", "p5", 0, torch.empty(257))
    finally:
        source.close()


@pytest.mark.parametrize("damage", [b"", b"\x00" * 4, (10**12).to_bytes(8, "little") + b"{}", b"\x08" + b"\x00" * 7 + b"not json"])
def test_a_damaged_header_is_corrupt(tmp_path, damage):
    path = tmp_path / "rank.safetensors"
    path.write_bytes(damage)
    data = path.read_bytes()

    def read_range(offset: int, length: int) -> bytes:
        return data[offset:offset + length]

    with pytest.raises(CheckpointCorrupt, match="rank.safetensors"):
        read_shard_header(read_range, what="rank.safetensors")
