"""Which checkpoint to resume from, and which to delete: reads the commit log and manifests."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tensile.checkpoint.api import CheckpointCorrupt, CommitRecord, Manifest
from tensile.checkpoint.tier import DirectoryTier

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

    @property
    def step(self) -> int:
        return self.manifest.step if self.manifest else 0


class Catalog:
    def __init__(self, tier: DirectoryTier):
        self.tier = tier

    def find_resume_point(self) -> ResumePoint:
        """The newest committed checkpoint whose manifest and checksums verify."""
        log_ = self.tier.commit_log
        point = ResumePoint(next_seq=log_.head() + 1)
        for seq, record, unreadable in log_.newest_first():
            if record is None:
                point.skipped.append((f"commit {seq}", unreadable or "unreadable"))
                continue
            try:
                manifest = self.tier.read_manifest(record.checkpoint_id)
                self.tier.verify(manifest)
            except CheckpointCorrupt as e:
                point.skipped.append((record.checkpoint_id, str(e)))
                log.warning("skipping checkpoint %s: %s", record.checkpoint_id, e)
                continue
            point.record, point.manifest = record, manifest
            break
        return point

    def committed(self) -> list[CommitRecord]:
        """Readable commit records, oldest first."""
        return [r for _, r, _ in reversed(list(self.tier.commit_log.newest_first())) if r is not None]

    def prune(self, keep_last: int) -> list[str]:
        """Delete checkpoints outside the newest `keep_last` commits, and orphans of failed
        or fenced saves (uncommitted and not newer than the newest commit)."""
        records = self.committed()
        if not records:
            return []
        keep = {r.checkpoint_id for r in records[-keep_last:]}
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
