"""What `tensile checkpoint` does: list, verify, export, reshard ahead of a resize, roll back.

Plain functions over a run's shared tier; the CLI only prints their results.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tensile.checkpoint.api import (DEEPSPEED_TAG, LAYOUT_SHARDED, CheckpointCorrupt, CheckpointError, Manifest,
                                    Tier)
from tensile.checkpoint.catalog import Catalog
from tensile.checkpoint.chunks import VerifiedRanges
from tensile.checkpoint.engine import incompatibility
from tensile.checkpoint.legacy_v1 import ensure_universal, needs_reshard
from tensile.checkpoint.locations import open_tier
from tensile.checkpoint.sharded.consolidate import consolidated_weights as sharded_weights
from tensile.checkpoint.sharded.layout import META

Location = str | Path
"""A run's shared tier: a directory or an s3:// URL (checkpoint.shared_dir)."""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    seq: int
    checkpoint_id: str
    manifest: Manifest | None
    problem: str | None
    """Why it is unusable (None: valid, or not verified)."""
    pinned: bool
    size_bytes: int


def list_checkpoints(shared_dir: Location, *, verify: bool) -> list[CheckpointRow]:
    """Every commit, newest first, with its manifest (and checksum verdict if asked)."""
    tier = open_tier(shared_dir)
    present = set(tier.list_checkpoint_ids())
    pin = Catalog(tier).pinned()
    rows = []
    for seq, record, unreadable in tier.commit_log.newest_first():
        if record is None:
            rows.append(CheckpointRow(seq, "?", None, unreadable, False, 0))
            continue
        manifest, problem = None, None
        try:
            manifest = tier.read_manifest(record.checkpoint_id)
            mark = tier.bad_mark(record.checkpoint_id)
            if mark is not None:
                problem = f"marked bad when a load found it corrupt: {mark.get('reason', '?')}"
            elif verify:
                tier.verify(manifest)
        except CheckpointCorrupt as e:
            problem = "deleted by retention" if record.checkpoint_id not in present else str(e)
        size = sum(f.size for f in manifest.files) if manifest else 0
        rows.append(CheckpointRow(seq, record.checkpoint_id, manifest, problem, record.checkpoint_id == pin, size))
    return rows


def resolve(tier: Tier, checkpoint_id: str | None) -> Manifest:
    """The named checkpoint, or the one a restart would resume from."""
    if checkpoint_id:
        manifest = tier.read_manifest(checkpoint_id)
        tier.verify(manifest)
        return manifest
    point = Catalog(tier).find_resume_point()
    if point.manifest is None:
        raise CheckpointError(f"no valid committed checkpoint under {tier.url}")
    return point.manifest


def consolidated_weights(tier: Tier, manifest: Manifest) -> dict[str, torch.Tensor]:
    """fp32 model weights whatever the ZeRO stage or worker count they were saved at."""
    if manifest.layout == LAYOUT_SHARDED:
        source = tier.range_reader(manifest)
        if manifest.verified_on_read:  # the round start's check was sizes only
            source = VerifiedRanges(source, manifest)
        try:
            sizes = {entry.path: entry.size for entry in manifest.files}
            weights = sharded_weights(source, manifest.world_size, sizes[META],
                                      what=f"checkpoint {manifest.checkpoint_id}")
        finally:
            source.close()
        return {name: tensor.float() for name, tensor in weights.items()}
    with tempfile.TemporaryDirectory(prefix="tensile-export-") as scratch:  # DeepSpeed reads files
        return _deepspeed_weights(tier.local_view(manifest, Path(scratch)), manifest)


def _deepspeed_weights(directory: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    if manifest.zero_stage == 3:  # the module file holds placeholders; the shards hold the weights
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DEEPSPEED_TAG)
    state = torch.load(directory / DEEPSPEED_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)
    return {name: tensor.float() for name, tensor in state["module"].items()}


def export_weights(shared_dir: Location, checkpoint_id: str | None, out: Path) -> tuple[Manifest, int]:
    """Write consolidated fp32 weights as safetensors; returns the manifest and tensor count."""
    from safetensors.torch import save_file

    tier = open_tier(shared_dir)
    manifest = resolve(tier, checkpoint_id)
    weights = consolidated_weights(tier, manifest)
    # Tied weights share storage, which safetensors refuses: each name gets its own copy.
    tensors = {name: tensor.detach().clone().contiguous() for name, tensor in weights.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"checkpoint_id": manifest.checkpoint_id, "step": str(manifest.step),
                                           "code_version": manifest.code_version})
    return manifest, len(tensors)


def reshard_ahead(shared_dir: Location, checkpoint_id: str | None, world_size: int) -> tuple[Manifest, float]:
    """Prepare the resume checkpoint for `world_size` workers before a planned resize."""
    tier = open_tier(shared_dir)
    manifest = resolve(tier, checkpoint_id)
    problem = incompatibility(manifest, zero_stage=manifest.zero_stage, world_size=world_size,
                              model_hash=manifest.model_hash)
    if problem:
        raise CheckpointError(problem)
    if not needs_reshard(manifest, world_size):
        return manifest, 0.0
    return manifest, ensure_universal(tier, manifest, rank=0, timeout_s=0)


def rollback(shared_dir: Location, checkpoint_id: str) -> Manifest:
    return Catalog(open_tier(shared_dir)).pin(checkpoint_id)
