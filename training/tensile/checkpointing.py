"""Saving and loading a DeepSpeed engine through Tensile's commit protocol.

Each rank writes its files to its node's own disk — ZeRO 1–3 state in Tensile's sharded layout
(loads at any worker count), ZeRO-0 as DeepSpeed's own checkpoint — and copies them to the
shared tier (fsynced, hashed); rank 0 gathers the hashes, writes the manifest last and publishes
the commit record exclusively. Only then does the checkpoint count.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tensile.checkpoint import (LAYOUT_DEEPSPEED, LAYOUT_SHARDED, Catalog, CommitRecord, DirectoryTier, FencingError,
                                Manifest, ResumePoint)
from tensile.checkpoint.api import CheckpointCorrupt, CheckpointError, FileEntry, Tier
from tensile.checkpoint.catalog import checkpoint_id_for
from tensile import faults
from tensile.reshard import UNIVERSAL_TAG, needs_reshard
from tensile.sharded_state import (META, ShardSnapshot, ShardSource, load_sharded, save_sharded, shard_source,
                                   snapshot_sharded)

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "state"
"""DeepSpeed writes its files under `<checkpoint>/<tag>/`."""
RANK_RECORDS = "ranks"
"""A background save's per-rank list of durable files, which rank 0 waits for to publish."""


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
    """Saves and loads one worker's share of the engine. Saves are collective (`save`) or, for
    the sharded layout, asynchronous (`save_async`): the loop waits only for a copy of this
    rank's slices in host memory; a background thread writes, uploads and — on rank 0, once
    every rank's files are durable — publishes. At most one save is in flight per rank."""

    def __init__(self, *, tier: Tier, local_dir: Path, rank: int, world_size: int,
                 zero_stage: int, config_hash: str, model_hash: str, data_version: str, keep_last: int,
                 persist_timeout_s: float = 600.0):
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
        self.persist_timeout_s = persist_timeout_s
        self._in_flight: threading.Thread | None = None
        self._host_buffers: dict[torch.dtype, torch.Tensor] = {}
        """Host memory for background saves, reused: only one is in flight at a time."""
        self.fenced: str | None = None
        """Set (on rank 0) when a background publish found another group's commit."""
        self.on_persisted: Callable[[dict[str, Any]], None] | None = None
        """Called from the background thread when a background save ends (published or not)."""

    @property
    def supports_async(self) -> bool:
        return self.layout == LAYOUT_SHARDED

    def wait_for_persist(self) -> None:
        """Block until this rank's save in flight, if any, has ended (published or failed)."""
        if self._in_flight is not None:
            self._in_flight.join()
            self._in_flight = None

    def save_async(self, engine: Any, *, step: int, lease: GroupLease, client_state: dict[str, Any],
                   reason: str) -> dict[str, float]:
        """Not collective. Snapshot this rank's slices, persist them in the background.
        Returns the time the loop was blocked (including waiting for the previous save)."""
        started = time.monotonic()
        self.wait_for_persist()
        snapshot = snapshot_sharded(engine, zero_stage=self.zero_stage, rank=self.rank,
                                    world_size=self.world_size, client_state=client_state, copy=True,
                                    host_buffers=self._host_buffers)
        checkpoint_id = checkpoint_id_for(step, lease.token)
        timings = {"stall_s": time.monotonic() - started, "bytes": float(snapshot.nbytes)}
        self._in_flight = threading.Thread(
            target=self._persist, name=f"persist-{checkpoint_id}", daemon=True,
            args=(snapshot, checkpoint_id, step, lease, reason, dict(timings)))
        self._in_flight.start()
        return timings

    def _persist(self, snapshot: ShardSnapshot, checkpoint_id: str, step: int, lease: GroupLease,
                 reason: str, timings: dict[str, float]) -> None:
        began = time.monotonic()
        outcome = {"checkpoint": checkpoint_id, "step": step, "reason": reason, "published": False, **timings}
        try:
            faults.persist_delay()
            local_root = self._local_root(checkpoint_id)
            entries = self._write_and_upload(snapshot.write, local_root, checkpoint_id, step)
            record = local_root / "rank.json"
            record.write_text(json.dumps([asdict(e) for e in entries]))
            self.tier.put_file(checkpoint_id, f"{RANK_RECORDS}/rank-{self.rank:05d}.json", record)
            outcome["persist_s"] = time.monotonic() - began
            if self.rank == 0:
                gathered = self._await_rank_records(checkpoint_id)
                result = self._publish(checkpoint_id, step, lease, gathered, reason)
                if result != "ok":
                    self.fenced = result
                    outcome["fenced"] = result
                else:
                    lease.next_seq += 1
                    lease.parent_id = checkpoint_id
                    outcome["published"] = True
                    outcome["durable_s"] = time.monotonic() - began
            self._drop_older_local_copies(keep=local_root)
        except Exception as e:  # noqa: BLE001 - reported; the next save tries again
            log.error("background save of %s failed: %s", checkpoint_id, e)
            outcome["error"] = f"{type(e).__name__}: {e}"
        if self.on_persisted is not None:
            self.on_persisted(outcome)

    def _await_rank_records(self, checkpoint_id: str) -> list[list[FileEntry]]:
        """Every rank's list of durable files, fetched from the tier as each appears."""
        deadline = time.monotonic() + self.persist_timeout_s
        scratch = self._local_root(checkpoint_id) / RANK_RECORDS
        scratch.mkdir(parents=True, exist_ok=True)
        records: dict[int, list[FileEntry]] = {}
        while len(records) < self.world_size:
            for rank in range(self.world_size):
                if rank in records:
                    continue
                target = scratch / f"rank-{rank:05d}.json"
                try:
                    self.tier.fetch_file(checkpoint_id, f"{RANK_RECORDS}/{target.name}", target)
                except CheckpointCorrupt:  # not there yet
                    continue
                records[rank] = [FileEntry(**e) for e in json.loads(target.read_text())]
            if len(records) < self.world_size:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.world_size)) - set(records))
                    raise TimeoutError(f"ranks {missing} never made their files durable")
                time.sleep(0.1)
        return [records[rank] for rank in range(self.world_size)]

    def _local_root(self, checkpoint_id: str) -> Path:
        # Per rank, so ranks sharing a node never mix files before upload.
        return self.local_dir / "checkpoints" / f"{checkpoint_id}.rank{self.rank}"

    def _write_and_upload(self, write: Callable[[Path], Any], local_root: Path, checkpoint_id: str,
                          step: int) -> list[FileEntry]:
        write(local_root)
        entries = []
        for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
            entries.append(self.tier.put_file(checkpoint_id, str(path.relative_to(local_root)), path))
            faults.maybe_crash_in_save(step=step, rank=self.rank)
        return entries

    def save(self, engine: Any, *, step: int, lease: GroupLease, client_state: dict[str, Any],
             reason: str) -> dict[str, float]:
        """Collective: every rank calls it, after any save in flight has ended. Raises
        FencingError on every rank if fenced."""
        self.wait_for_persist()
        started = time.monotonic()
        checkpoint_id = checkpoint_id_for(step, lease.token)
        local_root = self._local_root(checkpoint_id)
        if self.layout == LAYOUT_SHARDED:
            def write(directory: Path) -> Any:
                return save_sharded(engine, zero_stage=self.zero_stage, directory=directory, rank=self.rank,
                                    world_size=self.world_size, client_state=client_state)
        else:
            def write(directory: Path) -> Any:
                return engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, client_state=client_state,
                                              save_latest=False)
        entries = self._write_and_upload(write, local_root, checkpoint_id, step)
        written = time.monotonic()
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
        return {"stall_s": time.monotonic() - started, "write_s": written - started,
                "persist_s": time.monotonic() - written,
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

    def _shard_source(self, manifest: Manifest) -> ShardSource:
        own = sorted((self.local_dir / "checkpoints").glob(f"{manifest.checkpoint_id}.rank*"))
        return shard_source(self.tier, manifest, own)

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
        sizes = {entry.path: entry.size for entry in manifest.files}
        if manifest.layout == LAYOUT_SHARDED:
            source = self._shard_source(manifest)
            try:
                client_state, stats = load_sharded(
                    engine, zero_stage=self.zero_stage, source=source, saved_world_size=manifest.world_size,
                    meta_size=sizes[META], what=f"checkpoint {manifest.checkpoint_id}")
            finally:
                source.close()
            log.info("loaded %s (saved by %d workers) in %.2f s, %d bytes read by this rank",
                     manifest.checkpoint_id, manifest.world_size, stats.seconds, stats.bytes_read)
            return client_state
        # DeepSpeed's own files (ZeRO-0, version-1 checkpoints): its loader needs them on disk.
        # ZeRO state saved at another worker count loads from its universal layout (tensile.reshard
        # converts it, on a directory tier, before the engine is built).
        tag = UNIVERSAL_TAG if needs_reshard(manifest, self.world_size) else DEEPSPEED_TAG
        if isinstance(self.tier, DirectoryTier):
            load_dir = self.tier.checkpoint_dir(manifest.checkpoint_id)
        else:
            load_dir = self.local_dir / "restore" / manifest.checkpoint_id
            for entry in manifest.files:
                (load_dir / entry.path).parent.mkdir(parents=True, exist_ok=True)
                self.tier.fetch_file(manifest.checkpoint_id, entry.path, load_dir / entry.path)
        path, client_state = engine.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {load_dir}")
        return client_state or {}
