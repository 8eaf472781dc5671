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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


EPOCHS = "epochs"
"""Beside `commits/`: one exclusive record per group epoch (EpochClaim)."""


def _opens(path: Path) -> bool:
    """Whether `path` exists, asked with open(2): NFS close-to-open consistency makes the client
    ask the server, where a stat or a listing may be answered from its cache."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        return False
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

    def _listed(self) -> list[int]:
        """What a listing of `commits/` shows: a hint only, possibly stale on NFS."""
        try:
            return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
        except FileNotFoundError:
            return []

    def _exists(self, seq: int) -> bool:
        return _opens(self._path(seq))

    def sequence_numbers(self) -> list[int]:
        seqs = self._listed()
        seq = seqs[-1] if seqs else 0
        while self._exists(seq + 1):
            seq += 1
            seqs.append(seq)
        return seqs

    def read(self, seq: int) -> CommitRecord:
        return CommitRecord.from_json(self._path(seq).read_text())

    def publish(self, record: CommitRecord) -> None:
        """Create `commits/<seq>` with its full content, or raise FencingError if it exists.

        The record is written to a private file, then hard-linked into place: link(2) fails
        if the name exists, so creation is exclusive and the record is never seen half-written.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        private = self.directory / f".{record.seq}.{uuid.uuid4().hex}.tmp"
        with open(private, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(private, self._path(record.seq))
        except FileExistsError as e:
            # An NFS client retrying a link whose reply was lost (a session loss, a failover)
            # meets our own record: that is our publish having landed, not a fence.
            if self._stored(record.seq) != record.to_json():
                raise fenced(record, self.describe(record.seq)) from e
        finally:
            private.unlink(missing_ok=True)
        fsync_dir(self.directory)

    def _stored(self, seq: int) -> str | None:
        try:
            return self._path(seq).read_text()
        except OSError:
            return None

    # ---- epochs: which group is the newest ----------------------------------------------
    def claim_epoch(self, claim: EpochClaim) -> bool:
        """Create `epochs/<epoch>` if no group has; False if one has (another epoch number is
        then tried). A retried link that meets our own claim is ours."""
        directory = self.directory.parent / EPOCHS
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / record_name(claim.epoch)
        private = directory / f".{claim.epoch}.{uuid.uuid4().hex}.tmp"
        with open(private, "w") as f:
            f.write(claim.to_json())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(private, target)
        except FileExistsError:
            try:
                return EpochClaim.from_json(target.read_text()) == claim
            except (OSError, ValueError, TypeError):
                return False
        finally:
            private.unlink(missing_ok=True)
        fsync_dir(directory)
        return True

    def epoch_claims(self) -> list[EpochClaim]:
        directory = self.directory.parent / EPOCHS
        if not directory.exists():
            return []
        # Epochs are claimed at consecutive numbers: the listing is a hint, probed past (an NFS
        # client's cached listing can miss the newest claim; opening a name asks the server).
        numbers = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        claims, number = [], numbers[-1] + 1 if numbers else 1
        while _opens(directory / record_name(number)):
            numbers.append(number)
            number += 1
        for number in numbers:
            try:
                claims.append(EpochClaim.from_json((directory / record_name(number)).read_text()))
            except (OSError, ValueError, TypeError):
                continue  # half-visible or damaged: a claim no one can act on
        return claims
