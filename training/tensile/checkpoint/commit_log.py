"""The run's commit log: publishing a checkpoint is creating `commits/<seq>` exclusively.

A group expects to publish at the sequence number after the head it resumed from; a rival or
stale group that resumed from the same or an older head finds that number taken and is fenced.

On NFS (EFS) a directory listing can be served from the client's cache, tens of seconds old,
so the directory log never trusts one for its head: it probes the names after the listed head
one by one (a lookup of a named file revalidates where a cached readdir may not) until one is
missing. Records are published at consecutive numbers, so the first missing name ends the log.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from tensile.checkpoint.api import CommitRecord, EpochClaim, FencingError
from tensile.shared_fs import numbered


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


EPOCHS = "epochs"
"""Beside `commits/`: one exclusive record per group epoch (EpochClaim)."""


def _number(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def create_exclusively(target: Path, body: str) -> bool:
    """Create `target` holding `body`, durably, only if no one has: written to a private file,
    then hard-linked into place (link(2) fails if the name exists, so the record is never seen
    half-written). True if created, or if the file there is already ours (an NFS client retrying
    a link whose reply was lost, after a session loss or failover, meets our own record)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    private = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(private, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(private, target)
    except FileExistsError:
        try:
            return target.read_text() == body
        except OSError:
            return False
    finally:
        private.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return True


def record_name(seq: int) -> str:
    """A commit record's name under `commits/`: zero-padded so names sort as numbers."""
    return f"{seq:010d}"


def fenced(record: CommitRecord, winner: str) -> FencingError:
    return FencingError(
        f"commit {record.seq} was already published by another worker group ({winner}); "
        f"this group (token {record.group_token}) is stale and must stop")


class CommitLogReader(ABC):
    """What every commit log derives from `sequence_numbers` and `read`, wherever it is stored."""

    unreadable_errors: tuple[type[Exception], ...] = (OSError, ValueError, TypeError)
    """What `read` raises for a record that exists but cannot be used."""

    @abstractmethod
    def sequence_numbers(self) -> list[int]: ...

    @abstractmethod
    def read(self, seq: int) -> CommitRecord: ...

    def head(self) -> int:
        """Highest sequence number taken (0 when nothing was ever published)."""
        seqs = self.sequence_numbers()
        return seqs[-1] if seqs else 0

    def newest_first(self) -> Iterator[tuple[int, CommitRecord | None, str | None]]:
        """(seq, record, why-unreadable) from the head down."""
        for seq in reversed(self.sequence_numbers()):
            try:
                yield seq, self.read(seq), None
            except self.unreadable_errors as e:
                yield seq, None, f"commit record {seq} is unreadable: {e}"

    def describe(self, seq: int) -> str:
        """Who holds `seq`, for a FencingError."""
        try:
            other = self.read(seq)
            return f"checkpoint {other.checkpoint_id}, group {other.group_token}"
        except self.unreadable_errors:
            return "record unreadable"


class CommitLog(CommitLogReader):
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, seq: int) -> Path:
        return self.directory / record_name(seq)

    def sequence_numbers(self) -> list[int]:
        # Published at consecutive numbers: the listing is a hint, opened past (tensile.shared_fs).
        return numbered(self.directory, record_name, _number)

    def read(self, seq: int) -> CommitRecord:
        return CommitRecord.from_json(self._path(seq).read_text())

    def publish(self, record: CommitRecord) -> None:
        """Create `commits/<seq>` with its full content, or raise FencingError if it exists.

        The record is written to a private file, then hard-linked into place: link(2) fails
        if the name exists, so creation is exclusive and the record is never seen half-written.
        """
        if not create_exclusively(self._path(record.seq), record.to_json()):
            raise fenced(record, self.describe(record.seq))

    # ---- epochs: which group is the newest ----------------------------------------------
    def claim_epoch(self, claim: EpochClaim) -> bool:
        """Create `epochs/<epoch>` if no group has; False if one has (another epoch number is
        then tried). A retried link that meets our own claim is ours."""
        return create_exclusively(self.directory.parent / EPOCHS / record_name(claim.epoch), claim.to_json())

    def epoch_claims(self, newer_than: int = 0) -> list[EpochClaim]:
        directory = self.directory.parent / EPOCHS
        claims = []
        for number in numbered(directory, record_name, _number):
            if number <= newer_than:
                continue
            try:
                claims.append(EpochClaim.from_json((directory / record_name(number)).read_text()))
            except (OSError, ValueError, TypeError):
                continue  # half-visible or damaged: a claim no one can act on
        return claims
