"""Resuming a version-1 checkpoint (DeepSpeed's own files) at another worker count.

Checkpoints written since format version 2 store ZeRO state in Tensile's sharded layout and load
at any size directly (tensile.checkpoint.sharded); this path remains for older ones. DeepSpeed refuses a ZeRO≥1 checkpoint at another data-parallel size, but loads its
world-size-independent "universal" layout at any size. When the newest checkpoint was saved at
another size, rank 0 converts it once (DeepSpeed's ds_to_universal), into a private directory
renamed into place with its own manifest, so a crash or a concurrent restart can never leave a
half-converted layout that is loaded; the other ranks wait on the file, not on a collective.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from argparse import Namespace
from pathlib import Path

from tensile.checkpoint.api import (DEEPSPEED_TAG, LAYOUT_DEEPSPEED, CheckpointCorrupt, CheckpointIncompatible,
                                    Manifest, Tier)
from tensile.checkpoint.commit_log import fsync_dir

UNIVERSAL_TAG = "universal"
UNIVERSAL_MANIFEST = "universal-manifest.json"


def needs_reshard(manifest: Manifest | None, world_size: int) -> bool:
    """True when `manifest` holds DeepSpeed ZeRO≥1 files saved at another worker count."""
    return (manifest is not None and manifest.layout == LAYOUT_DEEPSPEED and manifest.zero_stage > 0
            and manifest.world_size != world_size)


def refusal(manifest: Manifest, world_size: int) -> str | None:
    """Why `manifest` cannot resume at `world_size` workers through this path, or None."""
    if manifest.zero_stage == 3 and needs_reshard(manifest, world_size):
        # Measured here: DeepSpeed 0.19.8's universal loading of ZeRO-3 optimizer state lets the
        # loss drift (4.5e-3 relative after 6 steps) where ZeRO-1/2 stay within 1e-7.
        return (f"checkpoint {manifest.checkpoint_id} (step {manifest.step}) holds ZeRO-3 state over "
                f"{manifest.world_size} workers in DeepSpeed's own "
                f"layout (format version {manifest.format_version}); resuming it at {world_size} is not "
                f"exact with DeepSpeed's universal loading, so Tensile refuses it: resume at "
                f"{manifest.world_size} workers once, and the next checkpoint, in Tensile's sharded "
                f"layout, resumes at any size")
    return None


def universal_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / UNIVERSAL_TAG


def _digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != UNIVERSAL_MANIFEST):
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def verify_universal(target: Path) -> bool:
    """True if a finished conversion is there and every file matches its recorded hash."""
    try:
        recorded = json.loads((target / UNIVERSAL_MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return recorded.get("files") == _digest_tree(target)


def convert(source_state: Path, target: Path) -> float:
    """ds_to_universal into a private directory, then an atomic rename; returns seconds."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    started = time.monotonic()
    private = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    args = Namespace(input_folder=str(source_state), output_folder=str(private), num_extract_workers=1,
                     num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    try:
        ds_to_universal(args)
        # The converter leaves its slice scratch space beside the output.
        shutil.rmtree(Path(str(private) + "_tmp"), ignore_errors=True)
        (private / UNIVERSAL_MANIFEST).write_text(json.dumps(
            {"files": _digest_tree(private), "source": str(source_state)}, indent=1))
        for path in private.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        try:
            os.rename(private, target)
        except OSError:
            if not verify_universal(target):  # another group's finished conversion is as good
                raise
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(Path(str(private) + "_tmp"), ignore_errors=True)
    return time.monotonic() - started


def ensure_universal(tier: Tier, manifest: Manifest, *, rank: int, timeout_s: float,
                     poll_s: float = 0.2) -> float:
    """Make the universal layout of `manifest`'s checkpoint exist; every rank calls it."""
    directory = tier.shared_directory(manifest.checkpoint_id)
    if directory is None:  # version 1 predates the S3 tier: never there
        raise CheckpointIncompatible(f"{manifest.checkpoint_id} is a version-1 checkpoint on {tier.url}; "
                                     f"converting one is supported on a directory tier only")
    target = universal_dir(directory)
    if rank == 0 and not verify_universal(target):
        if target.exists():
            shutil.rmtree(target)  # unverifiable: never load it, convert again
        return convert(directory / DEEPSPEED_TAG, target)
    deadline = time.monotonic() + timeout_s
    while not verify_universal(target):
        if time.monotonic() > deadline:
            raise CheckpointCorrupt(
                f"{manifest.checkpoint_id}: no universal layout after {timeout_s:.0f} s of waiting for "
                f"rank 0 to convert it")
        time.sleep(poll_s)
    return 0.0
