"""Resume time against checkpoint size, and what verifying as each rank reads costs.

For each size (0.2, 1, 4 GB) a ZeRO-style sharded checkpoint saved by 2 ranks is synthesised —
a few large fp32 parameters with their two Adam moments, written as real shard files and copied
into a directory tier by `put_file` (the writer's path: whole-file and per-chunk sha256 while
copying) — rather than trained, which 2 cores cannot do at 4 GB. Then:
  round start = rank 0's check before anyone loads: version 2 hashes every byte, version 3 only
                stats the files (the ranks verify what they read);
  load        = each of 3 ranks (a reshard 2 → 3: ranges of both saved files) reads its slices
                through the loader's own SliceIndex into host tensors, with and without
                VerifiedRanges; the slowest rank, and seconds per GB it read (linear: the ratio
                of s/GB at the largest size to the smallest stays near 1);
  verify      = a rank's verified bytes per second of verification's own time (the verified load
                less the unverified one) against hashlib.sha256 over the same bytes in memory,
                the floor for any check of every byte a rank loads (1.00: nothing but the hash).
Everything runs in one process, rank after rank, each load the median of 3; the files were just written, so reads come from
the page cache: these are CPU costs, not the disk's or the network's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

SIZES_GB = [0.2, 1.0, 4.0]
SAVED_RANKS = 2
LOADING_RANKS = 3
KINDS = ["param", "exp_avg", "exp_avg_sq"]
REPEATS = 3
PARAM_ELEMENTS = 16 << 20
"""64 MB per fp32 parameter; a checkpoint holds as many as its size needs."""


def _synthesise(tier, checkpoint_id: str, scratch: Path, nbytes: float, base: torch.Tensor):
    """A sharded checkpoint of about `nbytes` on `tier`; returns its manifest and parameter sizes."""
    from tensile.checkpoint import LAYOUT_SHARDED, Manifest
    from tensile.checkpoint.sharded.layout import shard_path, slice_key
    from tensile.checkpoint.sharded.shard_file import write_shard_file

    count = max(1, round(nbytes / (len(KINDS) * PARAM_ELEMENTS * 4)))
    numels = [PARAM_ELEMENTS] * count
    entries = []
    for rank in range(SAVED_RANKS):
        half = PARAM_ELEMENTS // SAVED_RANKS
        tensors = {slice_key(kind, f"p{i}", rank * half): base[:half] for i in range(count) for kind in KINDS}
        local = scratch / shard_path(rank)
        local.parent.mkdir(parents=True, exist_ok=True)
        write_shard_file(local, tensors, {"rank": str(rank)})
        entries.append(tier.put_file(checkpoint_id, shard_path(rank), local))
        local.unlink()
    manifest = Manifest(checkpoint_id=checkpoint_id, parent_id=None, step=1, world_size=SAVED_RANKS, zero_stage=2,
                        files=tuple(entries), config_hash="bench", data_version="bench", layout=LAYOUT_SHARDED)
    return manifest, numels


def _load_rank(source, manifest, numels: list[int], rank: int, buffer: torch.Tensor) -> tuple[float, int]:
    """Rank `rank` of LOADING_RANKS reads its piece of every parameter and kind; (seconds, bytes)."""
    from tensile.checkpoint.sharded.restore import SliceIndex

    started = time.monotonic()
    index = SliceIndex(source, SAVED_RANKS, what=manifest.checkpoint_id)
    for i, numel in enumerate(numels):
        piece = -(-numel // LOADING_RANKS)
        start = rank * piece
        length = max(0, min(piece, numel - start))
        for kind in KINDS:
            index.fill(kind, f"p{i}", start, buffer.narrow(0, 0, length))
    return time.monotonic() - started, index.bytes_read


def _raw_sha256_s(nbytes: int, memory: bytes, chunk: int) -> float:
    """hashlib.sha256 over `nbytes`, chunk by chunk, walking a buffer larger than the CPU's caches
    (as the loader's bytes are: one 4 MiB block hashed again and again would stay in cache)."""
    view = memoryview(memory)
    started = time.monotonic()
    left, offset = nbytes, 0
    while left > 0:
        size = min(left, chunk)
        if offset + size > len(view):
            offset = 0
        hashlib.sha256(view[offset:offset + size]).digest()
        offset += size
        left -= size
    return time.monotonic() - started


def main() -> dict[str, float]:
    from tensile.checkpoint import DirectoryTier
    from tensile.checkpoint.chunks import CHUNK_BYTES, VerifiedRanges
    from tensile.checkpoint.ranges import DirectoryRanges

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="tensile-verify-bench-"))
    free = shutil.disk_usage(workdir).free
    sizes = [gb for gb in SIZES_GB if gb * 1e9 * 1.6 < free]
    print(f"Resume and verification vs checkpoint size, {SAVED_RANKS} → {LOADING_RANKS} ranks, "
          f"chunks of {CHUNK_BYTES >> 20} MiB, this machine (page cache)")
    if len(sizes) < len(SIZES_GB):
        print(f"  skipped {[gb for gb in SIZES_GB if gb not in sizes]} GB: {free / 1e9:.0f} GB free in {workdir}")
    base = torch.randn(PARAM_ELEMENTS // SAVED_RANKS, generator=torch.Generator().manual_seed(0))
    buffer = torch.empty(-(-PARAM_ELEMENTS // LOADING_RANKS))
    memory = os.urandom(256 << 20)
    figures: dict[str, float] = {}
    per_gb: list[float] = []
    try:
        for gb in sizes:
            tier = DirectoryTier(workdir / f"tier-{gb}")
            started = time.monotonic()
            manifest, numels = _synthesise(tier, f"step-00000001-{int(gb * 10):08d}", workdir / "local", gb * 1e9, base)
            write_s = time.monotonic() - started
            total = sum(e.size for e in manifest.files)
            started = time.monotonic()
            tier.verify(manifest)
            v2_start_s = time.monotonic() - started
            started = time.monotonic()
            tier.verify(manifest, contents=False)
            v3_start_s = time.monotonic() - started
            verified, plain = [], []
            for rank in range(LOADING_RANKS):  # the median of REPEATS loads of each rank, each way
                runs = []
                for _ in range(REPEATS):
                    source = VerifiedRanges(DirectoryRanges(tier.checkpoint_dir(manifest.checkpoint_id)), manifest)
                    seconds, nbytes = _load_rank(source, manifest, numels, rank, buffer)
                    runs.append((seconds, nbytes, source.bytes_hashed))
                    source.close()
                verified.append(sorted(runs)[REPEATS // 2])
                runs = []
                for _ in range(REPEATS):
                    source = DirectoryRanges(tier.checkpoint_dir(manifest.checkpoint_id))
                    runs.append(_load_rank(source, manifest, numels, rank, buffer)[0])
                    source.close()
                plain.append(statistics.median(runs))
            slowest = max(range(LOADING_RANKS), key=lambda r: verified[r][0])
            seconds, nbytes, hashed = verified[slowest]
            raw_s = statistics.median(_raw_sha256_s(hashed, memory, CHUNK_BYTES) for _ in range(REPEATS))
            # Verification's own cost: the verified load less the same rank's unverified one.
            verify_rate, raw_rate = hashed / max(seconds - plain[slowest], 1e-9), hashed / raw_s
            per_gb.append(seconds / (nbytes / 1e9))
            print(f"  {total / 1e9:4.1f} GB (written + hashed in {write_s:5.1f} s) | round start: v2 {v2_start_s:6.2f} s, "
                  f"v3 {v3_start_s * 1e3:5.1f} ms | load, slowest rank ({nbytes / 1e9:.2f} GB): verified "
                  f"{seconds:5.2f} s ({per_gb[-1]:.2f} s/GB), unverified {max(plain):5.2f} s "
                  f"→ {seconds / max(plain):.2f}x | verify {verify_rate / 1e9:.2f} GB/s vs raw sha256 "
                  f"{raw_rate / 1e9:.2f} GB/s → {verify_rate / raw_rate:.2f} of raw "
                  f"(hashed {hashed / nbytes:.3f}x the bytes read)")
            figures[f"{gb}gb_verify_vs_raw_sha256"] = verify_rate / raw_rate
            figures[f"{gb}gb_verified_vs_unverified_load"] = seconds / max(plain)
            figures[f"{gb}gb_round_start_v2_over_v3"] = v2_start_s / max(v3_start_s, 1e-6)
            shutil.rmtree(workdir / f"tier-{gb}")
        if len(per_gb) > 1:
            figures["linearity"] = per_gb[-1] / per_gb[0]
            print(f"  linearity: load s/GB at {sizes[-1]} GB / at {sizes[0]} GB = {figures['linearity']:.2f} "
                  f"(1.00: time exactly proportional to the bytes a rank reads)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
