"""Which checkpoint to resume from, and which to delete: reads the commit log and manifests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tensile.checkpoint.api import CheckpointCorrupt, CommitRecord, EpochClaim, FencingError, Manifest, Tier

log = logging.getLogger(__name__)


def checkpoint_id_for(step: int, group_token: str) -> str:
    """Unique per group, so a rival group never writes into the same directory."""
    return f"step-{step:08d}-{group_token[:8]}"


def step_of(checkpoint_id: str) -> int | None:
    parts = checkpoint_id.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[0] == "step" and parts[1].isdigit() else None


@dataclass(slots=True)
class ResumePoint:
    next_seq: int
    """The sequence number this group must publish at next (head + 1): its fencing lease."""
    record: CommitRecord | None = None
    manifest: Manifest | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(what, why) for each newer commit that could not be used."""
    pinned: str | None = None
    """The rollback pin in force when the point was chosen."""

    @property
    def step(self) -> int:
        return self.manifest.step if self.manifest else 0


def superseded_by(record: CommitRecord, claims: list[EpochClaim]) -> EpochClaim | None:
    """The newer epoch that began before `record` was published, making it a stale group's
    commit (ignored by every reader), or None if the record stands."""
    for claim in claims:
        if claim.epoch > record.epoch and claim.head_seen < record.seq:
            return claim
    return None


def stale_commit(record: CommitRecord, claim: EpochClaim) -> str:
    return (f"commit {record.seq} ({record.checkpoint_id}) was published by a stale group (epoch "
            f"{record.epoch}) after epoch {claim.epoch} began at commit {claim.head_seen}")


MAX_EPOCH_ATTEMPTS = 16


class Catalog:
    def __init__(self, tier: Tier):
        self.tier = tier

    # ---- epochs: the newest group wins -------------------------------------------------
    def claim_epoch(self, group_token: str) -> EpochClaim:
        """Claim the next epoch for this group (rank 0, at round start)."""
        log_ = self.tier.commit_log
        for _ in range(MAX_EPOCH_ATTEMPTS):
            epoch = max((c.epoch for c in log_.epoch_claims()), default=0) + 1  # once per round
            claim = EpochClaim(epoch=epoch, head_seen=log_.head(), group_token=group_token)
            if log_.claim_epoch(claim):
                return claim
        raise FencingError(f"could not claim an epoch in {MAX_EPOCH_ATTEMPTS} tries: other groups keep "
                           f"starting on this run's tier ({self.tier.url})")

    def publish(self, record: CommitRecord) -> int:
        """Publish `record` as its epoch at its seq, or past commits of stale groups; returns
        the seq it took. FencingError if a newer epoch has begun (this group is the stale one)."""
        log_ = self.tier.commit_log
        while True:
            newer = log_.epoch_claims(newer_than=record.epoch)
            if newer:
                raise FencingError(f"a newer worker group (epoch {newer[-1].epoch}, token {newer[-1].group_token}) "
                                   f"began after this one (epoch {record.epoch}, token {record.group_token}): "
                                   f"this group is stale and must stop")
            try:
                log_.publish(record)
            except FencingError:
                try:
                    taken = log_.read(record.seq)
                except log_.unreadable_errors:
                    raise
                if taken.epoch >= record.epoch:
                    raise
                log.warning("commit %d (%s) was published by a stale group (epoch %d) after this group's epoch "
                            "%d began: publishing past it", taken.seq, taken.checkpoint_id, taken.epoch, record.epoch)
                record = CommitRecord(seq=record.seq + 1, checkpoint_id=record.checkpoint_id, step=record.step,
                                      group_token=record.group_token, epoch=record.epoch)
                continue
            # A newer group that began before this record landed ignores it: so must we.
            claim = superseded_by(record, log_.epoch_claims(newer_than=record.epoch))
            if claim is not None:
                raise FencingError(stale_commit(record, claim) + ": this group is stale and must stop")
            return record.seq

    # ---- the resume pin (rollback) -----------------------------------------------------
    def pinned(self) -> str | None:
        pin = self.tier.read_pin()
        return pin.get("checkpoint_id") if pin else None

    def pin(self, checkpoint_id: str, reason: str = "rollback") -> Manifest:
        """Make `checkpoint_id` the resume point; training continues from it on a new branch."""
        manifest = self.tier.read_manifest(checkpoint_id)
        self._refuse_if_marked_bad(checkpoint_id)
        self.tier.verify(manifest)
        self.tier.write_pin({"checkpoint_id": checkpoint_id, "step": manifest.step,
                             "reason": reason, "pinned_at": time.time()})
        return manifest

    # ---- checkpoints found corrupt while loading ----------------------------------------
    def mark_bad(self, checkpoint_id: str, reason: str, **details: object) -> None:
        """No reader resumes from `checkpoint_id` again (rank 0, once the group agreed a load
        found it corrupt); it stays on the tier for inspection until retention removes it."""
        self.tier.mark_bad(checkpoint_id, {"reason": reason, "marked_at": time.time(), **details})

    def _refuse_if_marked_bad(self, checkpoint_id: str) -> None:
        mark = self.tier.bad_mark(checkpoint_id)
        if mark is not None:
            raise CheckpointCorrupt(f"{checkpoint_id}: marked bad when a load found it corrupt: "
                                    f"{mark.get('reason', '?')}")

    def find_resume_point(self, before_verify: Callable[[Manifest], None] | None = None) -> ResumePoint:
        """The newest committed checkpoint that is not marked bad and verifies: every file there
        at its size and, unless every rank verifies what it reads while loading (a version-3
        sharded checkpoint), its sha256. With a pin, only the pinned checkpoint and its branch's
        descendants qualify. `before_verify` hears of each checkpoint about to be hashed here
        (hashing reads all of its bytes)."""
        log_ = self.tier.commit_log
        pin = self.pinned()
        point = ResumePoint(next_seq=log_.head() + 1, pinned=pin)
        claims = log_.epoch_claims()
        for seq, record, unreadable in log_.newest_first():
            if record is None:
                point.skipped.append((f"commit {seq}", unreadable or "unreadable"))
                continue
            newer = superseded_by(record, claims)
            if newer is not None:
                point.skipped.append((record.checkpoint_id, stale_commit(record, newer)))
                continue
            try:
                manifest = self.tier.read_manifest(record.checkpoint_id)
                if pin and record.checkpoint_id != pin and manifest.branch != pin:
                    continue  # off the pinned branch: kept, not resumed from
                self._refuse_if_marked_bad(record.checkpoint_id)
                hash_here = not manifest.verified_on_read
                if hash_here and before_verify is not None:
                    before_verify(manifest)
                self.tier.verify(manifest, contents=hash_here)
            except CheckpointCorrupt as e:
                point.skipped.append((record.checkpoint_id, str(e)))
                log.warning("skipping checkpoint %s: %s", record.checkpoint_id, e)
                continue
            point.record, point.manifest = record, manifest
            break
        if pin and point.manifest is None:
            raise CheckpointCorrupt(f"pinned checkpoint {pin} is not committed or does not verify; "
                                    f"pin another with `tensile checkpoint rollback`")
        return point

    def lineage(self, checkpoint_id: str) -> list[str]:
        """The checkpoint and its ancestors, newest first, as far as manifests remain."""
        chain, current = [], checkpoint_id
        while current and current not in chain:
            chain.append(current)
            try:
                current = self.tier.read_manifest(current).parent_id
            except CheckpointCorrupt:
                break
        return chain

    def committed(self) -> list[CommitRecord]:
        """Readable commit records that stand (not a stale group's), oldest first."""
        claims = self.tier.commit_log.epoch_claims()
        return [r for _, r, _ in reversed(list(self.tier.commit_log.newest_first()))
                if r is not None and superseded_by(r, claims) is None]

    def prune(self, keep_last: int) -> list[str]:
        """Delete checkpoints outside the newest `keep_last` commits, and orphans of failed
        or fenced saves (uncommitted and not newer than the newest commit)."""
        records = self.committed()
        if not records:
            return []
        keep = {r.checkpoint_id for r in records[-keep_last:]}
        pin = self.pinned()
        if pin:  # never the pinned checkpoint or its lineage
            keep.update(self.lineage(pin))
        newest_step = records[-1].step
        deleted = []
        for checkpoint_id in self.tier.list_checkpoint_ids():
            if checkpoint_id in keep:
                continue
            step = step_of(checkpoint_id)
            if step is None or step > newest_step:
                continue  # not ours to judge: maybe another group's save in flight
            self.tier.delete_checkpoint(checkpoint_id)
            deleted.append(checkpoint_id)
        return deleted
