"""Range readers over a checkpoint's files: what the sharded loader reads its byte ranges through.

A directory tier serves every range with a `pread` of its own file; any other tier with ranged
reads of its objects (S3 GETs), except where this node still holds its own copy of a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from tensile.checkpoint.api import CheckpointCorrupt, ReadRange, Tier


class LocalFileRanges:
    """A ReadRange over a local file, keeping one descriptor (pread: no shared position)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)

    def __call__(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise CheckpointCorrupt(f"{self.path}: wanted {length} bytes at {offset}, the file has fewer")
        return data

    def close(self) -> None:
        os.close(self._fd)


class DirectoryRanges:
    """Every file of a checkpoint directory, opened on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._open: dict[str, LocalFileRanges] = {}

    def ranges(self, rel_path: str) -> ReadRange:
        if rel_path not in self._open:
            try:
                self._open[rel_path] = LocalFileRanges(self.root / rel_path)
            except FileNotFoundError as e:
                raise CheckpointCorrupt(f"{self.root.name}: {rel_path} is missing") from e
        return self._open[rel_path]

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


class TierRanges:
    """Byte ranges of a checkpoint on any tier (ranged GETs on S3), preferring this node's own
    copy of a file when it still has one of the same size (a restart on the same node)."""

    def __init__(self, tier: Tier, checkpoint_id: str, sizes: dict[str, int], local_copies: list[Path]):
        self.tier = tier
        self.checkpoint_id = checkpoint_id
        self.sizes = sizes
        self.local_copies = local_copies
        self._local: dict[str, LocalFileRanges] = {}

    def ranges(self, rel_path: str) -> ReadRange:
        if rel_path in self._local:
            return self._local[rel_path]
        for root in self.local_copies:
            candidate = root / rel_path
            try:
                if candidate.stat().st_size == self.sizes.get(rel_path):
                    self._local[rel_path] = LocalFileRanges(candidate)
                    return self._local[rel_path]
            except FileNotFoundError:
                continue

        def read_range(offset: int, length: int) -> bytes:
            return self.tier.read_range(self.checkpoint_id, rel_path, offset, length)

        return read_range

    @property
    def local_reads(self) -> list[str]:
        return sorted(self._local)

    def close(self) -> None:
        for reader in self._local.values():
            reader.close()
        self._local.clear()
