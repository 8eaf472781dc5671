"""The durable tier as a directory (a shared filesystem such as EFS); s3_tier.py is the S3 one.

Every write is durable before it is acknowledged: file fsynced, renamed into place, parent fsynced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tensile.checkpoint.api import (
    BAD_MARK, MANIFEST, PIN, parse_bad_mark, CheckpointCorrupt, FileEntry, Manifest, RangeReader, check_range, missing_file, no_manifest,
    parse_manifest, partial_beside, whole_range, wrong_sha256, wrong_size)
from tensile.checkpoint.chunks import CHUNK_BYTES, FileHasher
from tensile.checkpoint.commit_log import CommitLog, fsync_dir
from tensile.checkpoint.ranges import DirectoryRanges

_CHUNK = CHUNK_BYTES


class DirectoryTier:
    """Checkpoints under `<root>/checkpoints/<id>/`, the commit log under `<root>/commits/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)
        self.checkpoints = self.root / "checkpoints"
        self.commit_log = CommitLog(self.root / "commits")

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        return self.checkpoints / checkpoint_id

    def shared_directory(self, checkpoint_id: str) -> Path | None:
        return self.checkpoint_dir(checkpoint_id)

    def local_view(self, manifest: Manifest, scratch: Path) -> Path:
        return self.checkpoint_dir(manifest.checkpoint_id)  # already files: read in place

    def range_reader(self, manifest: Manifest, local_copies: list[Path] | None = None) -> RangeReader:
        return DirectoryRanges(self.checkpoint_dir(manifest.checkpoint_id))  # one pread per range

    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry:
        """Copy a local file into the checkpoint, hashing it (whole and per chunk) as it goes;
        durable on return."""
        target = self.checkpoint_dir(checkpoint_id) / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        hasher = FileHasher()
        with open(source, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(_CHUNK):
                hasher.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, Path(target))
        fsync_dir(target.parent)
        return hasher.entry(rel_path)

    def write_manifest(self, manifest: Manifest) -> None:
        """Written last: a checkpoint directory without a manifest is never loaded."""
        directory = self.checkpoint_dir(manifest.checkpoint_id)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / (MANIFEST + ".partial")
        with open(partial, "w") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, directory / MANIFEST)
        fsync_dir(directory)

    def read_manifest(self, checkpoint_id: str) -> Manifest:
        try:
            text = (self.checkpoint_dir(checkpoint_id) / MANIFEST).read_text()
        except FileNotFoundError as e:
            raise no_manifest(checkpoint_id) from e
        return parse_manifest(checkpoint_id, text)

    def verify(self, manifest: Manifest, *, contents: bool = True) -> None:
        """Check every file's size and (with `contents`) sha256; raise CheckpointCorrupt naming
        the first mismatch."""
        directory = self.checkpoint_dir(manifest.checkpoint_id)
        for entry in manifest.files:
            path = directory / entry.path
            try:
                size = path.stat().st_size
            except FileNotFoundError as e:
                raise missing_file(manifest.checkpoint_id, entry.path) from e
            if size != entry.size:
                raise wrong_size(manifest.checkpoint_id, entry, size)
            if not contents:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                raise wrong_sha256(manifest.checkpoint_id, entry)

    def read_range(self, checkpoint_id: str, rel_path: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; CheckpointCorrupt if the file is missing or shorter."""
        check_range(checkpoint_id, rel_path, offset, length)
        try:
            fd = os.open(self.checkpoint_dir(checkpoint_id) / rel_path, os.O_RDONLY)
        except FileNotFoundError as e:
            raise missing_file(checkpoint_id, rel_path) from e
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return whole_range(checkpoint_id, rel_path, offset, length, data)

    def fetch_file(self, checkpoint_id: str, rel_path: str, target: Path) -> None:
        """Copy a checkpoint file to a local path; the target never holds a partial copy."""
        partial = partial_beside(Path(target))
        try:
            shutil.copyfile(self.checkpoint_dir(checkpoint_id) / rel_path, partial)
        except FileNotFoundError as e:
            raise missing_file(checkpoint_id, rel_path) from e
        os.replace(partial, Path(target))

    def mark_bad(self, checkpoint_id: str, record: dict) -> None:
        path = self.checkpoint_dir(checkpoint_id) / BAD_MARK
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(record))
        os.replace(partial, path)
        fsync_dir(path.parent)

    def bad_mark(self, checkpoint_id: str) -> dict | None:
        """An unreadable mark (a writer that died mid-way leaves none: it is renamed in) counts."""
        try:
            text = (self.checkpoint_dir(checkpoint_id) / BAD_MARK).read_text()
        except FileNotFoundError:
            return None
        return parse_bad_mark(text)

    def read_pin(self) -> dict | None:
        """The rollback pin, or None when there is none (an unreadable pin counts as none)."""
        try:
            data = json.loads((self.root / PIN).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_pin(self, data: dict) -> None:
        path = self.root / PIN
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(data))
        os.replace(partial, path)

    def list_checkpoint_ids(self) -> list[str]:
        if not self.checkpoints.exists():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir() if p.is_dir())

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        shutil.rmtree(self.checkpoint_dir(checkpoint_id), ignore_errors=True)
