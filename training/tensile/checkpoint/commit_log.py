"""The run's commit log: publishing a checkpoint is creating `commits/<seq>` exclusively.

A group expects to publish at the sequence number after the head it resumed from; a rival or
stale group that resumed from the same or an older head finds that number taken and is fenced.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from tensile.checkpoint.api import CommitRecord, FencingError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CommitLog:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:010d}"

    def sequence_numbers(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def head(self) -> int:
        """Highest sequence number taken (0 when nothing was ever published)."""
        seqs = self.sequence_numbers()
        return seqs[-1] if seqs else 0

    def read(self, seq: int) -> CommitRecord:
        return CommitRecord.from_json(self._path(seq).read_text())

    def newest_first(self) -> Iterator[tuple[int, CommitRecord | None, str | None]]:
        """(seq, record, why-unreadable) from the head down."""
        for seq in reversed(self.sequence_numbers()):
            try:
                yield seq, self.read(seq), None
            except (OSError, ValueError, TypeError) as e:
                yield seq, None, f"commit record {seq} is unreadable: {e}"

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
            winner = self._describe(record.seq)
            raise FencingError(
                f"commit {record.seq} was already published by another worker group ({winner}); "
                f"this group (token {record.group_token}) is stale and must stop") from e
        finally:
            private.unlink(missing_ok=True)
        fsync_dir(self.directory)

    def _describe(self, seq: int) -> str:
        try:
            other = self.read(seq)
            return f"checkpoint {other.checkpoint_id}, group {other.group_token}"
        except (OSError, ValueError, TypeError):
            return "record unreadable"
