"""Saving and loading a DeepSpeed engine through Tensile's commit protocol.

Each rank writes its files to its node's own disk — ZeRO 1–3 state in Tensile's sharded layout
(loads at any worker count), ZeRO-0 as DeepSpeed's own checkpoint — and copies them to the
shared tier (fsynced, hashed); rank 0 gathers the hashes, writes the manifest last and publishes
the commit record exclusively. Only then does the checkpoint count.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tensile.checkpoint import (LAYOUT_DEEPSPEED, LAYOUT_SHARDED, Catalog, CommitRecord, DirectoryTier, FencingError,
                                Manifest, ResumePoint)
from tensile.checkpoint.api import CheckpointError
from tensile.checkpoint.catalog import checkpoint_id_for
from tensile import faults
from tensile.reshard import UNIVERSAL_TAG, needs_reshard
from tensile.sharded_state import META, DirectoryShardSource, load_sharded, save_sharded

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "state"
"""DeepSpeed writes its files under `<checkpoint>/<tag>/`."""


def code_version() -> str:
    """The training code's commit: baked into the image (TENSILE_CODE_VERSION, which has no
    .git), else read from the checkout this package runs from, else "unknown"."""
    baked = os.environ.get("TENSILE_CODE_VERSION")
    if baked:
        return baked
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import deepspeed

    import tensile

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "tensile": tensile.__version__}


@dataclass(slots=True)
class GroupLease:
    """What a worker group holds between its round start and its next publish."""

    token: str
    next_seq: int
    parent_id: str | None
    branch: str = ""
    """The rollback this group's checkpoints descend from ("" on the original line)."""


class EngineCheckpointer:
    def __init__(self, *, tier: DirectoryTier, local_dir: Path, rank: int, world_size: int,
                 zero_stage: int, config_hash: str, model_hash: str, data_version: str, keep_last: int):
        self.tier = tier
        self.catalog = Catalog(tier)
        self.local_dir = local_dir
        self.rank = rank
        self.world_size = world_size
        self.zero_stage = zero_stage
        self.config_hash = config_hash
        self.model_hash = model_hash
        self.data_version = data_version
        self.keep_last = keep_last

    def save(self, engine: Any, *, step: int, lease: GroupLease, client_state: dict[str, Any],
             reason: str) -> dict[str, float]:
        """Collective: every rank calls it. Raises FencingError on every rank if fenced."""
        started = time.monotonic()
        checkpoint_id = checkpoint_id_for(step, lease.token)
        # Per rank, so ranks sharing a node never mix files before upload.
        local_root = self.local_dir / "checkpoints" / f"{checkpoint_id}.rank{self.rank}"
        if self.layout == LAYOUT_SHARDED:
            save_sharded(engine, zero_stage=self.zero_stage, directory=local_root, rank=self.rank,
                         world_size=self.world_size, client_state=client_state)
        else:
            engine.save_checkpoint(str(local_root), tag=DEEPSPEED_TAG, client_state=client_state,
                                   save_latest=False)
        written = time.monotonic()
        entries = []
        for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
            entries.append(self.tier.put_file(checkpoint_id, str(path.relative_to(local_root)), path))
            faults.maybe_crash_in_save(step=step, rank=self.rank)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, entries)
        outcome: list[Any] = [None]
        if self.rank == 0:
            outcome[0] = self._publish(checkpoint_id, step, lease, gathered, reason)
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] != "ok":
            raise FencingError(outcome[0])
        lease.next_seq += 1
        lease.parent_id = checkpoint_id
        self._drop_older_local_copies(keep=local_root)
        return {"write_s": written - started, "persist_s": time.monotonic() - written,
                "bytes": float(sum(e.size for rank_entries in gathered for e in rank_entries))}

    def _publish(self, checkpoint_id: str, step: int, lease: GroupLease,
                 gathered: list[list[Any]], reason: str) -> str:
        files = tuple(entry for rank_entries in gathered for entry in rank_entries)
        manifest = Manifest(
            checkpoint_id=checkpoint_id, parent_id=lease.parent_id, step=step,
            world_size=self.world_size, zero_stage=self.zero_stage, files=files,
            config_hash=self.config_hash, model_hash=self.model_hash, data_version=self.data_version,
            versions=library_versions(), created_at=time.time(), reason=reason,
            branch=lease.branch, code_version=code_version(), layout=self.layout)
        self.tier.write_manifest(manifest)
        record = CommitRecord(seq=lease.next_seq, checkpoint_id=checkpoint_id, step=step,
                              group_token=lease.token)
        try:
            self.tier.commit_log.publish(record)
        except FencingError as e:
            return str(e)
        deleted = self.catalog.prune(self.keep_last)
        if deleted:
            log.info("retention removed %s", ", ".join(deleted))
        return "ok"

    @property
    def layout(self) -> str:
        return LAYOUT_SHARDED if self.zero_stage > 0 else LAYOUT_DEEPSPEED

    def _drop_older_local_copies(self, keep: Path) -> None:
        for path in (self.local_dir / "checkpoints").iterdir():
            if path != keep and path.name.endswith(f".rank{self.rank}"):
                shutil.rmtree(path, ignore_errors=True)

    def load(self, engine: Any, point: ResumePoint) -> dict[str, Any]:
        """Load the resume point into the engine; returns the client state saved with it."""
        manifest = point.manifest
        if manifest is None:
            raise CheckpointError("no checkpoint to load")
        if manifest.layout == LAYOUT_SHARDED:
            source = DirectoryShardSource(self.tier.checkpoint_dir(manifest.checkpoint_id))
            sizes = {entry.path: entry.size for entry in manifest.files}
            try:
                client_state, stats = load_sharded(
                    engine, zero_stage=self.zero_stage, source=source, saved_world_size=manifest.world_size,
                    meta_size=sizes[META], what=f"checkpoint {manifest.checkpoint_id}")
            finally:
                source.close()
            log.info("loaded %s (saved by %d workers) in %.2f s, %d bytes read by this rank",
                     manifest.checkpoint_id, manifest.world_size, stats.seconds, stats.bytes_read)
            return client_state
        # A version-1 checkpoint: ZeRO state saved at another worker count loads from its universal layout
        # (tensile.reshard converts it before the engine is built).
        tag = UNIVERSAL_TAG if needs_reshard(manifest, self.world_size) else DEEPSPEED_TAG
        load_dir = self.tier.checkpoint_dir(manifest.checkpoint_id)
        path, client_state = engine.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {load_dir}")
        return client_state or {}
