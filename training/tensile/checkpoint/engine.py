"""Saving and loading a DeepSpeed engine through Tensile's commit protocol, and when to save.

Each rank writes its files to its node's own disk — ZeRO 1–3 state in Tensile's sharded layout
(loads at any worker count), ZeRO-0 as DeepSpeed's own checkpoint — and copies them to the
shared tier (fsynced, hashed); rank 0 gathers the hashes, writes the manifest last and publishes
the commit record exclusively. Only then does the checkpoint count.

A save returns a SaveResult. A background save's result is handed back once, on the training
thread (`poll`, `wait`); the group's lease on the commit log moves on only there, so nothing the
background thread does is read back from shared state.
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
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from tensile.checkpoint.api import (DEEPSPEED_TAG, LAYOUT_DEEPSPEED, LAYOUT_SHARDED, CheckpointCorrupt,
                                    CheckpointError, CommitRecord, CorruptOnLoad, FencingError, FileEntry, Manifest,
                                    SaveResult, Tier)
from tensile.checkpoint.catalog import Catalog, ResumePoint, checkpoint_id_for
from tensile.checkpoint.chunks import VerifiedRanges
from tensile.checkpoint.legacy_v1 import UNIVERSAL_TAG, needs_reshard, refusal
from tensile.checkpoint.sharded.layout import META
from tensile.checkpoint.sharded.restore import load_sharded
from tensile.checkpoint.sharded.snapshot import ShardSnapshot, snapshot_sharded
from tensile.fault_hooks import NO_FAULTS, FaultHooks
from tensile.placement import CPU_PLACEMENT, Placement

log = logging.getLogger(__name__)

SETTLE_AFTER_ABANDON_S = 2.0
"""How long an abandoned background save may take to notice it (rank 0 polls every 0.1 s)."""
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


def incompatibility(manifest: Manifest, *, zero_stage: int, world_size: int, model_hash: str,
                    precision: str | None = None) -> str | None:
    """Why this job cannot resume from `manifest`, naming what differs, or None. `precision`:
    the one this job trains in (None: not judged)."""
    where = f"checkpoint {manifest.checkpoint_id} (step {manifest.step})"
    if manifest.model_hash and manifest.model_hash != model_hash:
        return (f"{where} holds another model shape (model hash {manifest.model_hash}, this config "
                f"{model_hash}); restore the model section it was trained with, or use a new run directory")
    if manifest.zero_stage != zero_stage:
        return (f"{where} was saved with ZeRO stage {manifest.zero_stage}, this config uses stage "
                f"{zero_stage}; set zero.stage to {manifest.zero_stage}")
    if precision is not None and manifest.precision != precision and manifest.layout != LAYOUT_SHARDED:
        # Tensile's sharded layout holds fp32 masters and moments whatever the precision; DeepSpeed's
        # own files hold its optimizer object, which differs by precision (FP16_UnfusedOptimizer or not).
        return (f"{where} was saved in {manifest.precision} and this config trains in {precision}; its "
                f"{manifest.layout} layout (DeepSpeed's own files) resumes only in the precision it was saved "
                f"in: set precision.dtype to {manifest.precision} (ZeRO 1–3 checkpoints in Tensile's sharded "
                f"layout resume in any precision)")
    return refusal(manifest, world_size)


# ---- when to save ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SavePolicy:
    """When the trainer saves, why, and whether the loop may go on while the save persists."""

    every_steps: int
    asynchronous: bool

    def reason(self, step: int, *, final: bool, stopping: bool, asked: bool) -> str | None:
        """Why to save after `step` (steps done), or None: final, stop, rebalance or periodic."""
        if final:
            return "final"
        if stopping:
            return "stop"
        if asked:
            return "rebalance"
        return "periodic" if step % self.every_steps == 0 else None

    def in_background(self, reason: str, layout: str) -> bool:
        """Stop and final saves complete before the process exits; only the sharded layout has a
        host snapshot to persist from."""
        return self.asynchronous and reason in ("periodic", "rebalance") and layout == LAYOUT_SHARDED


# ---- the group's lease on the commit log --------------------------------------------------

@dataclass(frozen=True, slots=True)
class GroupLease:
    """What a worker group holds between its round start and its next publish."""

    token: str
    next_seq: int
    parent_id: str | None
    branch: str = ""
    """The rollback this group's checkpoints descend from ("" on the original line)."""
    epoch: int = 0
    """The epoch this group claimed at its round start: it publishes as that epoch."""

    @classmethod
    def for_round(cls, token: str, point: ResumePoint, epoch: int = 0) -> "GroupLease":
        manifest = point.manifest
        if manifest is None:
            return cls(token=token, next_seq=point.next_seq, parent_id=None, epoch=epoch)
        # Resuming from a rollback pin starts a branch named after it; descendants inherit it.
        branch = manifest.checkpoint_id if point.pinned == manifest.checkpoint_id else manifest.branch
        return cls(token=token, next_seq=point.next_seq, parent_id=manifest.checkpoint_id, branch=branch,
                   epoch=epoch)

    def after_publish(self, checkpoint_id: str, seq: int | None = None) -> "GroupLease":
        """Published at `seq` (default: the lease's own, unless stale commits were passed)."""
        taken = self.next_seq if seq is None else seq
        return replace(self, next_seq=taken + 1, parent_id=checkpoint_id)


@dataclass(frozen=True, slots=True)
class CheckpointIdentity:
    """What every manifest of this job records about what it trained."""

    config_hash: str
    model_hash: str
    data_version: str
    precision: str = "fp32"
    """The precision the job trains in (fp32, bf16, fp16)."""


class SavedState(Protocol):
    """The trainer's own state, saved beside the engine's (DeepSpeed's `client_state`)."""

    def state_dict(self) -> dict[str, Any]: ...


class PhaseWait(Protocol):
    """One phase of the group's control plane (tensile.elastic.control.Phase)."""

    def extend(self, seconds: float) -> None: ...
    def gather(self, value: Any) -> list[Any]: ...
    def broadcast(self, value: Any = None, *, src: int = 0) -> Any: ...
    def barrier(self) -> None: ...
    def __enter__(self) -> "PhaseWait": ...
    def __exit__(self, kind, error, traceback) -> None: ...


class Coordinator(Protocol):
    """Where the group's ranks agree during a save or a load: waits with deadlines that follow
    the bytes moved, not the per-step collective timeout (tensile.elastic.control.ControlPlane)."""

    def seconds_for(self, nbytes: float) -> float: ...
    def begin(self, name: str, *, expected_s: float = 0.0) -> PhaseWait: ...


@dataclass(frozen=True, slots=True)
class SaveStarted:
    """A background save has its snapshot and is persisting."""

    checkpoint_id: str
    stall_s: float
    """How long the loop was blocked: waiting for the previous save, then the host copy."""
    previous: SaveResult | None
    """The save that was still in flight and had to end first (to be reported, once)."""


class SaveAbandoned(CheckpointError):
    """A background save given up because another rank's part of it failed."""


class EngineCheckpointer:
    """Saves and loads one worker's share of the engine. Saves are collective (`save`) or, for
    the sharded layout, asynchronous (`save_async`): the loop waits only for a copy of this
    rank's slices in host memory; a background thread writes, uploads and — on rank 0, once
    every rank's files are durable — publishes. At most one save is in flight per rank."""

    def __init__(self, *, tier: Tier, local_dir: Path, rank: int, world_size: int, zero_stage: int,
                 identity: CheckpointIdentity, keep_last: int, lease: GroupLease, control: Coordinator,
                 persist_timeout_s: float = 600.0, faults: FaultHooks = NO_FAULTS,
                 placement: Placement = CPU_PLACEMENT):
        self.tier = tier
        self.placement = placement
        """Where the engine's state lives: snapshots of a GPU's state go through pinned host buffers."""
        self.catalog = Catalog(tier)
        self.local_dir = local_dir
        self.rank = rank
        self.world_size = world_size
        self.zero_stage = zero_stage
        self.identity = identity
        self.keep_last = keep_last
        self.lease = lease
        """Moves on when a save is published, on the training thread only."""
        self.persist_timeout_s = persist_timeout_s
        self.control = control
        self.faults = faults
        self._in_flight: Future[SaveResult] | None = None
        self._in_flight_bytes = 0.0
        self._abandon = threading.Event()
        self._abandon_reason = ""
        """Set by the training thread when another rank's part of the save in flight failed."""
        self._host_buffers: dict[torch.dtype, torch.Tensor] = {}
        """Host memory for background saves, reused: only one is in flight at a time."""

    @property
    def layout(self) -> str:
        return LAYOUT_SHARDED if self.zero_stage > 0 else LAYOUT_DEEPSPEED

    # ---- background saves ---------------------------------------------------------------
    def poll(self) -> SaveResult | None:
        """The background save that has ended since the last call, if any; does not block."""
        if self._in_flight is None or not self._in_flight.done():
            return None
        return self.wait()

    def wait(self) -> SaveResult | None:
        """Block until the background save in flight, if any, has ended; its result, once."""
        if self._in_flight is None:
            return None
        future, self._in_flight = self._in_flight, None
        result = future.result()
        if result.published:
            self.lease = self.lease.after_publish(result.checkpoint_id, result.seq)
        return result

    def save_async(self, engine: Any, state: SavedState, *, step: int, reason: str,
                   blocked_since: float | None = None) -> SaveStarted:
        """Not collective. Snapshot this rank's slices, persist them in the background.
        `blocked_since`: when the loop stopped for this save (default: now)."""
        started = time.monotonic() if blocked_since is None else blocked_since
        previous = self.wait()
        snapshot = snapshot_sharded(engine, zero_stage=self.zero_stage, rank=self.rank,
                                    world_size=self.world_size, client_state=state.state_dict(), copy=True,
                                    host_buffers=self._host_buffers, pin_memory=self.placement.pin_host_memory)
        checkpoint_id = checkpoint_id_for(step, self.lease.token)
        stall_s = time.monotonic() - started
        future: Future[SaveResult] = Future()
        lease = self.lease
        self._abandon = abandon = threading.Event()

        def persist() -> None:
            try:
                future.set_result(self._persist(snapshot, checkpoint_id, step, lease, reason, stall_s, abandon))
            except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
                future.set_exception(e)

        self._in_flight, self._in_flight_bytes = future, float(snapshot.nbytes)
        threading.Thread(target=persist, name=f"persist-{checkpoint_id}", daemon=True).start()
        return SaveStarted(checkpoint_id=checkpoint_id, stall_s=stall_s, previous=previous)

    def settle(self, *, extra_s: float) -> SaveResult | None:
        """The process is about to exit: wait for the background save in flight to end, up to
        `extra_s` plus the time its bytes take (written, then uploaded). One still running then is
        abandoned (rank 0 stops waiting for the other ranks' files and publishes nothing). Its
        result, once, or None if there was none or it did not end."""
        future = self._in_flight
        if future is None:
            return None
        if not wait_for([future], timeout=extra_s + self.control.seconds_for(2 * self._in_flight_bytes)).done:
            self.abandon("the process is exiting")
            if not wait_for([future], timeout=SETTLE_AFTER_ABANDON_S).done:
                return None  # mid-upload: the exit cuts it off before any manifest or commit
        return self.wait()

    def abandon(self, why: str) -> None:
        """Another rank's part of the background save in flight failed: stop waiting for it (the
        save is not published; its result says why). The next save tries again."""
        self._abandon_reason = why
        self._abandon.set()

    def _persist(self, snapshot: ShardSnapshot, checkpoint_id: str, step: int, lease: GroupLease,
                 reason: str, stall_s: float, abandon: threading.Event) -> SaveResult:
        """The background thread: everything it learns goes into the result it returns."""
        began = time.monotonic()
        result = SaveResult(checkpoint_id=checkpoint_id, step=step, reason=reason, asynchronous=True,
                            bytes=float(snapshot.nbytes), stall_s=stall_s)
        try:
            self.faults.before_persist(step=step, rank=self.rank)
            local_root = self._local_root(checkpoint_id)
            entries = self._write_and_upload(snapshot.write, local_root, checkpoint_id, step)
            record = local_root / "rank.json"
            record.write_text(json.dumps([asdict(e) for e in entries]))
            self.tier.put_file(checkpoint_id, f"{RANK_RECORDS}/rank-{self.rank:05d}.json", record)
            result = replace(result, persist_s=time.monotonic() - began)
            if self.rank == 0:
                gathered = self._await_rank_records(checkpoint_id, abandon)
                try:
                    seq = self._publish(checkpoint_id, step, lease, gathered, reason)
                except FencingError as e:
                    result = replace(result, fenced=str(e))
                else:
                    result = replace(result, published=True, seq=seq, durable_s=time.monotonic() - began)
            self._drop_older_local_copies(keep=local_root)
        except Exception as e:  # noqa: BLE001 - reported; the next save tries again
            log.error("background save of %s failed: %s", checkpoint_id, e)
            result = replace(result, error=f"{type(e).__name__}: {e}")
        return result

    def _await_rank_records(self, checkpoint_id: str, abandon: threading.Event) -> list[list[FileEntry]]:
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
                records[rank] = [FileEntry.from_dict(e) for e in json.loads(target.read_text())]
            if len(records) < self.world_size:
                if abandon.is_set():
                    raise SaveAbandoned(f"abandoned: {self._abandon_reason}")
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.world_size)) - set(records))
                    raise TimeoutError(f"ranks {missing} never made their files durable")
                time.sleep(0.1)
        return [records[rank] for rank in range(self.world_size)]

    # ---- synchronous saves --------------------------------------------------------------
    def save(self, engine: Any, state: SavedState, *, step: int, reason: str) -> SaveResult:
        """Every rank calls it, with no background save in flight (`wait` first). Raises
        FencingError on every rank if fenced. The ranks agree through the control plane, each
        announcing the time its bytes may take, so a large save never reads as a lost peer."""
        if self._in_flight is not None:
            raise RuntimeError("a background save is still in flight: wait() for it before saving")
        started = time.monotonic()
        lease = self.lease
        checkpoint_id = checkpoint_id_for(step, lease.token)
        local_root = self._local_root(checkpoint_id)
        client_state = state.state_dict()
        if self.layout == LAYOUT_SHARDED:
            # Views of host-resident state; state on a GPU is copied to host first (no save in flight
            # holds the host buffers now).
            snapshot = snapshot_sharded(engine, zero_stage=self.zero_stage, rank=self.rank,
                                        world_size=self.world_size, client_state=client_state, copy=False,
                                        host_buffers=self._host_buffers, pin_memory=self.placement.pin_host_memory)
            write, nbytes = snapshot.write, snapshot.nbytes
        else:
            def write(directory: Path) -> Any:
                return save_deepspeed_replicated(engine, directory, rank=self.rank, client_state=client_state)
            nbytes = replicated_state_bytes(engine) if self.rank == 0 else 0
        # Written locally, then uploaded (and hashed): twice the bytes.
        with self.control.begin("save", expected_s=self.control.seconds_for(2 * nbytes)) as phase:
            entries = self._write_and_upload(write, local_root, checkpoint_id, step)
            written = time.monotonic()
            gathered = phase.gather(entries)
            outcome: tuple[int | None, str | None] = (None, None)
            if self.rank == 0:
                try:
                    outcome = (self._publish(checkpoint_id, step, lease, gathered, reason), None)
                except FencingError as e:
                    outcome = (None, str(e))
            seq, fenced = phase.broadcast(outcome)
        if fenced is not None:
            raise FencingError(fenced)
        self.lease = lease.after_publish(checkpoint_id, seq)
        self._drop_older_local_copies(keep=local_root)
        return SaveResult(checkpoint_id=checkpoint_id, step=step, reason=reason, asynchronous=False,
                          published=True, seq=seq, stall_s=time.monotonic() - started,
                          write_s=written - started, persist_s=time.monotonic() - written,
                          bytes=float(sum(e.size for rank_entries in gathered for e in rank_entries)))

    # ---- shared by both -----------------------------------------------------------------
    def _local_root(self, checkpoint_id: str) -> Path:
        # Per rank, so ranks sharing a node never mix files before upload.
        return self.local_dir / "checkpoints" / f"{checkpoint_id}.rank{self.rank}"

    def _write_and_upload(self, write: Callable[[Path], Any], local_root: Path, checkpoint_id: str,
                          step: int) -> list[FileEntry]:
        local_root.mkdir(parents=True, exist_ok=True)
        write(local_root)
        entries = []
        for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
            entries.append(self.tier.put_file(checkpoint_id, str(path.relative_to(local_root)), path))
            self.faults.after_checkpoint_file(step=step, rank=self.rank)
        return entries

    def _publish(self, checkpoint_id: str, step: int, lease: GroupLease, gathered: list[list[Any]],
                 reason: str) -> int:
        """Manifest, then the commit record as the lease's epoch at its seq (or past a stale
        group's commits); returns the seq taken. FencingError if this group is the stale one."""
        files = tuple(entry for rank_entries in gathered for entry in rank_entries)
        manifest = Manifest(
            checkpoint_id=checkpoint_id, parent_id=lease.parent_id, step=step,
            world_size=self.world_size, zero_stage=self.zero_stage, files=files,
            config_hash=self.identity.config_hash, model_hash=self.identity.model_hash,
            data_version=self.identity.data_version, versions=library_versions(), created_at=time.time(),
            reason=reason, branch=lease.branch, code_version=code_version(), layout=self.layout,
            precision=self.identity.precision)
        self.tier.write_manifest(manifest)
        seq = self.catalog.publish(CommitRecord(seq=lease.next_seq, checkpoint_id=checkpoint_id, step=step,
                                                group_token=lease.token, epoch=lease.epoch))
        deleted = self.catalog.prune(self.keep_last)
        if deleted:
            log.info("retention removed %s", ", ".join(deleted))
        return seq

    def _drop_older_local_copies(self, keep: Path) -> None:
        for path in (self.local_dir / "checkpoints").iterdir():
            if path != keep and path.name.endswith(f".rank{self.rank}"):
                shutil.rmtree(path, ignore_errors=True)

    # ---- loading ------------------------------------------------------------------------
    def load(self, engine: Any, point: ResumePoint) -> dict[str, Any]:
        """Load the resume point into the engine; returns the trainer state saved with it."""
        manifest = point.manifest
        if manifest is None:
            raise CheckpointError("no checkpoint to load")
        # A rank reads at most all of it; verifying as it reads (version 3), it also hashes it
        # and widens its ranges to whole chunks: twice the bytes' time.
        total = sum(entry.size for entry in manifest.files) * (2 if manifest.verified_on_read else 1)
        agreed: CorruptOnLoad | None = None
        with self.control.begin("load", expected_s=self.control.seconds_for(total)) as phase:
            if manifest.layout == LAYOUT_SHARDED:
                try:
                    return self._load_sharded(engine, manifest, phase)
                except CorruptOnLoad as e:
                    # Every rank raises it together, after agreeing: leaving the phase with it
                    # would tell the others of a failure, racing the host rank's last wait.
                    agreed = e
            else:
                # DeepSpeed's own files (ZeRO-0, version-1 checkpoints): its loader needs them on
                # disk. ZeRO state saved at another worker count loads from its universal layout
                # (legacy_v1 converts it, on a directory tier, before the engine is built).
                tag = UNIVERSAL_TAG if needs_reshard(manifest, self.world_size) else DEEPSPEED_TAG
                load_dir = self.tier.local_view(manifest, self.local_dir / "restore")
                phase.barrier()  # every rank has its files: DeepSpeed's loader then waits on no download
                path, client_state = engine.load_checkpoint(
                    str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if agreed is not None:
            raise agreed
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {load_dir}")
        return client_state or {}

    def _load_sharded(self, engine: Any, manifest: Manifest, phase: PhaseWait) -> dict[str, Any]:
        own = sorted((self.local_dir / "checkpoints").glob(f"{manifest.checkpoint_id}.rank*"))
        source = self.tier.range_reader(manifest, own)
        if manifest.verified_on_read:  # version 3: this rank checks each chunk it reads
            source = VerifiedRanges(source, manifest)
        sizes = {entry.path: entry.size for entry in manifest.files}
        try:
            client_state, stats = load_sharded(
                engine, zero_stage=self.zero_stage, source=source, saved_world_size=manifest.world_size,
                meta_size=sizes[META], what=f"checkpoint {manifest.checkpoint_id}", agree=phase.gather)
        finally:
            source.close()
        log.info("loaded %s (saved by %d workers) in %.2f s, %d bytes read by this rank%s",
                 manifest.checkpoint_id, manifest.world_size, stats.seconds, stats.bytes_read,
                 f", {source.bytes_hashed} verified" if isinstance(source, VerifiedRanges) else "")
        return client_state


# ---- ZeRO-0: DeepSpeed's own file, written by rank 0 alone --------------------------------

def replicated_state_bytes(engine: Any) -> int:
    """An upper bound of a ZeRO-0 checkpoint's size: weights, Adam's two moments, a master copy."""
    return 4 * sum(p.numel() * p.element_size() for p in engine.module.parameters())


def save_deepspeed_replicated(engine: Any, directory: Path, *, rank: int, client_state: dict[str, Any]) -> None:
    """ZeRO-0 state in DeepSpeed's own layout (`<dir>/state/mp_rank_00_model_states.pt`, what
    `engine.load_checkpoint` reads), written by rank 0 alone. DeepSpeed's `save_checkpoint` would
    write the same file but hold every other rank in a `dist.barrier()` for as long as rank 0
    writes; that wait is the control plane's (a phase), so only its non-collective part runs here:
    `_create_checkpoint_file` and `_save_checkpoint` of DeepSpeed 0.19.8 (checked by name)."""
    if rank != 0:
        return  # the state is replicated: rank 0's copy is the checkpoint
    missing = [n for n in ("_create_checkpoint_file", "_save_checkpoint", "save_non_zero_checkpoint")
               if not hasattr(engine, n)]
    if missing or engine.zero_optimization():
        raise RuntimeError(f"DeepSpeed's engine lacks {', '.join(missing) or 'ZeRO-0'}: Tensile's ZeRO-0 "
                           f"save was written against DeepSpeed 0.19.8")
    engine._create_checkpoint_file(str(directory), DEEPSPEED_TAG, False)
    engine._save_checkpoint(str(directory), DEEPSPEED_TAG, client_state=client_state)
