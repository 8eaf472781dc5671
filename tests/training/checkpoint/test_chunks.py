"""Per-chunk hashes (format version 3): written while a file is copied, checked by each reader on
exactly the chunks it reads; the round start then checks sizes only, and a checkpoint a load
found corrupt is marked bad and never resumed from again."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from tensile.checkpoint import (LAYOUT_SHARDED, Catalog, CheckpointCorrupt, CommitRecord, CorruptOnLoad,
                                DirectoryTier, FileEntry, Manifest)
from tensile.checkpoint.catalog import checkpoint_id_for
from tensile.checkpoint.chunks import FileHasher, VerifiedRanges, hash_bytes
from tensile.checkpoint.ranges import DirectoryRanges
from tensile.checkpoint.sharded.layout import META, shard_path, slice_key
from tensile.checkpoint.sharded.restore import SliceIndex, load_sharded
from tensile.checkpoint.sharded.shard_file import write_shard_file

SMALL_CHUNK = 64


def test_file_hasher_is_the_same_however_the_bytes_are_fed():
    payload = random.Random(0).randbytes(1000)
    whole = hash_bytes("f", payload, SMALL_CHUNK)
    hasher = FileHasher(SMALL_CHUNK)
    cursor = 0
    for piece in [1, 63, 64, 65, 200, 7, 600]:
        hasher.update(payload[cursor:cursor + piece])
        cursor += piece
    assert hasher.entry("f") == whole
    assert whole.sha256 == hashlib.sha256(payload).hexdigest()
    assert whole.chunks == tuple(hashlib.sha256(payload[i:i + SMALL_CHUNK]).hexdigest()
                                 for i in range(0, 1000, SMALL_CHUNK))
    assert whole.chunked and len(whole.chunks) == 16


class CountingRanges:
    """A RangeReader over in-memory files that counts the bytes it serves."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.served = 0

    def ranges(self, rel_path):
        def read(offset, length):
            self.served += length
            return self.files[rel_path][offset:offset + length]
        return read

    def close(self):
        pass


def _manifest(files: dict[str, bytes], chunk_size: int = SMALL_CHUNK, **overrides) -> Manifest:
    fields = dict(checkpoint_id="step-00000010-aaaaaaaa", parent_id=None, step=10, world_size=2, zero_stage=2,
                  files=tuple(hash_bytes(path, data, chunk_size) for path, data in files.items()),
                  config_hash="c", data_version="d", layout=LAYOUT_SHARDED)
    return Manifest(**(fields | overrides))


def test_verified_ranges_return_exactly_the_bytes_asked_for():
    data = random.Random(1).randbytes(1000)
    source = VerifiedRanges(CountingRanges({"f": data}), _manifest({"f": data}))
    read = source.ranges("f")
    rng = random.Random(2)
    for _ in range(300):
        offset = rng.randrange(0, 1000)
        length = rng.randrange(0, 1000 - offset + 1)
        assert bytes(read(offset, length)) == data[offset:offset + length], (offset, length)
    with pytest.raises(CheckpointCorrupt, match="ends before"):
        read(990, 20)


def test_a_read_is_widened_to_whole_chunks_and_a_neighbour_in_the_same_chunk_is_not_read_again():
    data = bytes(1000)
    inner = CountingRanges({"f": data})
    source = VerifiedRanges(inner, _manifest({"f": data}))
    read = source.ranges("f")
    read(10, 20)
    assert inner.served == SMALL_CHUNK, "widened to its chunk"
    read(30, 20)
    assert inner.served == SMALL_CHUNK, "the same chunk: kept, not read again"
    read(60, 100)  # chunks 0..2: chunk 0 kept
    assert inner.served == 3 * SMALL_CHUNK
    read(990, 10)  # the last, short chunk
    assert inner.served == 3 * SMALL_CHUNK + 1000 - 15 * SMALL_CHUNK
    source.close()
    assert source.bytes_hashed == inner.served, "counted after closing too, for the load's log line"


def test_a_corrupt_chunk_fails_only_the_reads_that_touch_it():
    data = bytearray(random.Random(3).randbytes(1000))
    manifest = _manifest({"f": bytes(data)})
    data[5 * SMALL_CHUNK + 3] ^= 0x01  # chunk 5
    read = VerifiedRanges(CountingRanges({"f": bytes(data)}), manifest).ranges("f")
    assert bytes(read(0, 5 * SMALL_CHUNK)) == bytes(data[:5 * SMALL_CHUNK])
    assert bytes(read(6 * SMALL_CHUNK, 100)) == bytes(data[6 * SMALL_CHUNK:6 * SMALL_CHUNK + 100])
    with pytest.raises(CheckpointCorrupt, match=r"step-00000010-aaaaaaaa: f chunk 5 \(bytes 320\.\.384\) fails its sha256"):
        read(5 * SMALL_CHUNK - 1, 2)


def test_a_version_3_manifest_round_trips_and_a_version_2_one_still_reads(tmp_path):
    manifest = _manifest({"f": b"x" * 100, META: b"m"})
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.format_version == 3 and manifest.verified_on_read
    old = json.loads(manifest.to_json())
    old["format_version"] = 2
    for entry in old["files"]:
        del entry["chunk_size"], entry["chunks"]
    read = Manifest.from_json(json.dumps(old))
    assert read.files[0] == FileEntry("f", 100, hashlib.sha256(b"x" * 100).hexdigest())
    assert not read.verified_on_read, "version 2: verified whole at round start, as before"


# ---- many ranks at another world size: each verifies exactly the chunks it reads ----------

NUMELS = [300, 5, 1000, 77]


def _save_sharded(directory, world: int) -> dict[str, torch.Tensor]:
    """Each parameter cut in `world` contiguous pieces, piece r in rank r's file."""
    g = torch.Generator().manual_seed(0)
    full = {f"p{i}": torch.randn(n, generator=g) for i, n in enumerate(NUMELS)}
    (directory / "shards").mkdir(parents=True)
    for rank in range(world):
        tensors = {}
        for name, values in full.items():
            piece = -(-values.numel() // world)
            start = rank * piece
            if start < values.numel():
                tensors[slice_key("param", name, start)] = values[start:start + piece].clone()
        write_shard_file(directory / shard_path(rank), tensors, {"rank": str(rank)})
    return full


def test_ranks_at_another_world_size_verify_what_they_read_of_other_ranks_files(tmp_path):
    directory = tmp_path / "ckpt"
    full = _save_sharded(directory, world=2)
    files = {shard_path(r): (directory / shard_path(r)).read_bytes() for r in range(2)}
    manifest = _manifest(files, chunk_size=32)
    # Corrupt the last chunk of rank 1's file: p3's last 8 elements, which only rank 2 of 3 reads.
    path = directory / shard_path(1)
    damaged = bytearray(files[shard_path(1)])
    damaged[-1] ^= 0x01
    path.write_bytes(bytes(damaged))

    def load_at_3(rank: int) -> dict[str, torch.Tensor]:
        index = SliceIndex(VerifiedRanges(DirectoryRanges(directory), manifest), 2, what="test")
        out = {}
        for name, values in full.items():
            piece = -(-values.numel() // 3)
            start = rank * piece
            dest = torch.empty(max(0, min(piece, values.numel() - start)))
            index.fill("param", name, start, dest)
            out[name] = dest
        return out

    for rank in (0, 1):  # neither reads the damaged chunk
        for name, values in load_at_3(rank).items():
            start = rank * -(-full[name].numel() // 3)
            assert torch.equal(values, full[name][start:start + values.numel()])
    with pytest.raises(CheckpointCorrupt, match=rf"{shard_path(1)} chunk \d+ .* fails its sha256"):
        load_at_3(2)


def test_a_load_that_finds_a_corrupt_chunk_raises_it_agreed_by_every_rank(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / META).write_bytes(b"meta bytes!")
    manifest = _manifest({META: b"other bytes"})
    told = []

    def agree(finding):
        told.append(finding)
        return [finding, "rank 1's own finding"]

    with pytest.raises(CorruptOnLoad) as caught:
        load_sharded(None, zero_stage=2, source=VerifiedRanges(DirectoryRanges(directory), manifest),
                     saved_world_size=1, meta_size=len(b"other bytes"), what="checkpoint x", agree=agree)
    assert len(told) == 1 and "meta.pt chunk 0" in told[0], "this rank's finding went to the others"
    assert caught.value.findings[0].startswith("rank 0: ") and caught.value.findings[1] == "rank 1: rank 1's own finding"


# ---- the catalog: sizes only at round start for version 3; bad marks -----------------------

def _commit_sharded(tier: DirectoryTier, tmp_path, seq: int, step: int, *, chunked: bool = True) -> Manifest:
    checkpoint_id = checkpoint_id_for(step, "a" * 32)
    entries = []
    for rel in (META, shard_path(0)):
        source = tmp_path / f"src-{step}-{rel.replace('/', '_')}"
        source.write_bytes(f"{rel} at {step}".encode() * 50)
        entry = tier.put_file(checkpoint_id, rel, source)
        entries.append(entry if chunked else FileEntry(entry.path, entry.size, entry.sha256))
    manifest = Manifest(checkpoint_id=checkpoint_id, parent_id=None, step=step, world_size=1, zero_stage=2,
                        files=tuple(entries), config_hash="c", data_version="d", layout=LAYOUT_SHARDED,
                        format_version=3 if chunked else 2)
    tier.write_manifest(manifest)
    tier.commit_log.publish(CommitRecord(seq=seq, checkpoint_id=checkpoint_id, step=step, group_token="a" * 32))
    return manifest


def _flip_a_byte(tier: DirectoryTier, manifest: Manifest) -> None:
    path = tier.checkpoint_dir(manifest.checkpoint_id) / shard_path(0)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_start_checks_only_sizes_of_a_version_3_sharded_checkpoint(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit_sharded(tier, tmp_path, 1, 3)
    newest = _commit_sharded(tier, tmp_path, 2, 6)
    _flip_a_byte(tier, newest)  # found by the ranks that read it, not here
    hashed = []
    point = Catalog(tier).find_resume_point(before_verify=hashed.append)
    assert point.manifest == newest and not hashed
    path = tier.checkpoint_dir(newest.checkpoint_id) / shard_path(0)
    path.write_bytes(path.read_bytes()[:-1])
    point = Catalog(tier).find_resume_point()
    assert point.step == 3 and "has " in point.skipped[0][1], "a wrong size is still seen at round start"


def test_round_start_still_hashes_a_version_2_checkpoint(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit_sharded(tier, tmp_path, 1, 3, chunked=False)
    newest = _commit_sharded(tier, tmp_path, 2, 6, chunked=False)
    _flip_a_byte(tier, newest)
    hashed = []
    point = Catalog(tier).find_resume_point(before_verify=hashed.append)
    assert point.step == 3 and "sha256" in point.skipped[0][1]
    assert [m.step for m in hashed] == [6, 3]


def test_a_checkpoint_marked_bad_is_skipped_saying_why_and_cannot_be_pinned(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit_sharded(tier, tmp_path, 1, 3)
    newest = _commit_sharded(tier, tmp_path, 2, 6)
    catalog = Catalog(tier)
    catalog.mark_bad(newest.checkpoint_id, "rank 1: chunk 4 fails its sha256 check", step=6)
    point = catalog.find_resume_point()
    assert point.step == 3
    assert point.skipped == [(newest.checkpoint_id, f"{newest.checkpoint_id}: marked bad when a load found it "
                                                    f"corrupt: rank 1: chunk 4 fails its sha256 check")]
    with pytest.raises(CheckpointCorrupt, match="marked bad"):
        catalog.pin(newest.checkpoint_id)
    assert tier.bad_mark(newest.checkpoint_id)["step"] == 6


# ---- the group agrees: every rank raises, none announces a failure ------------------------

def test_every_rank_raises_the_agreed_corruption_and_leaves_the_load_phase_clean(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    import torch.distributed as dist

    from tensile.checkpoint import engine as engine_module
    from tensile.checkpoint.catalog import ResumePoint
    from tensile.checkpoint.engine import CheckpointIdentity, EngineCheckpointer, GroupLease
    from tensile.checkpoint.sharded.restore import raise_if_any_found
    from tensile.elastic.control import ControlPlane

    def reads_then_agrees(engine, *, agree, what, source, **_):
        # Rank 1 alone reads the damaged chunk (as at a reshard); the others find nothing.
        raise_if_any_found(agree("chunk 2 fails its sha256 check" if engine == 1 else None), what=what)
        return {}, None

    monkeypatch.setattr(engine_module, "load_sharded", reads_then_agrees)
    server = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=10), wait_for_workers=False)
    files = {META: b"m" * 10, shard_path(0): b"s" * 10}
    manifest = _manifest(files, world_size=1)
    point = ResumePoint(next_seq=2, manifest=manifest)

    def rank(number: int):
        store = dist.TCPStore("127.0.0.1", server.port, None, False, timedelta(seconds=10))
        control = ControlPlane(store, rank=number, world_size=3, base_timeout_s=5, tier_bytes_per_s=1e6)
        checkpointer = EngineCheckpointer(
            tier=DirectoryTier(tmp_path / "shared"), local_dir=tmp_path / f"local-{number}", rank=number,
            world_size=3, zero_stage=2, identity=CheckpointIdentity(config_hash="c", model_hash="", data_version="d"),
            keep_last=2, lease=GroupLease(token="t" * 32, next_seq=2, parent_id=None), control=control)
        try:
            checkpointer.load(number, point)  # the "engine" is the rank's number, for the fake
        except Exception as e:  # noqa: BLE001 - what each rank raised is the result
            return e
        return None

    with ThreadPoolExecutor(3) as pool:
        raised = list(pool.map(rank, range(3)))
    assert all(isinstance(e, CorruptOnLoad) for e in raised), raised
    assert all(e.findings == ["rank 1: chunk 2 fails its sha256 check"] for e in raised)
    assert not server.check(["tensile/load/0/failed"]), "an agreed error is not a peer's failure"
