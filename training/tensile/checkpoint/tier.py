"""The shared durable tier as a directory (a shared filesystem here; S3 comes as another tier).

Every write is durable before it is acknowledged: file fsynced, renamed into place, parent fsynced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tensile.checkpoint.api import CheckpointCorrupt, FileEntry, Manifest
from tensile.checkpoint.commit_log import CommitLog, fsync_dir

MANIFEST = "manifest.json"
_CHUNK = 4 << 20


class DirectoryTier:
    """Checkpoints under `<root>/checkpoints/<id>/`, the commit log under `<root>/commits/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.commit_log = CommitLog(self.root / "commits")

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        return self.checkpoints / checkpoint_id

    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry:
        """Copy a local file into the checkpoint, hashing as it goes; durable on return."""
        target = self.checkpoint_dir(checkpoint_id) / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        digest, size = hashlib.sha256(), 0
        with open(source, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)
        fsync_dir(target.parent)
        return FileEntry(path=rel_path, size=size, sha256=digest.hexdigest())

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
        path = self.checkpoint_dir(checkpoint_id) / MANIFEST
        try:
            manifest = Manifest.from_json(path.read_text())
        except FileNotFoundError as e:
            raise CheckpointCorrupt(f"{checkpoint_id}: no manifest (the save never finished)") from e
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointCorrupt(f"{checkpoint_id}: unreadable manifest: {e}") from e
        except CheckpointCorrupt as e:  # an unknown format version: say which checkpoint
            raise CheckpointCorrupt(f"{checkpoint_id}: {e}") from e
        if manifest.checkpoint_id != checkpoint_id:
            raise CheckpointCorrupt(f"{checkpoint_id}: manifest names {manifest.checkpoint_id}")
        return manifest

    def verify(self, manifest: Manifest) -> None:
        """Check every file's size and sha256; raise CheckpointCorrupt naming the first mismatch."""
        directory = self.checkpoint_dir(manifest.checkpoint_id)
        for entry in manifest.files:
            path = directory / entry.path
            try:
                size = path.stat().st_size
            except FileNotFoundError as e:
                raise CheckpointCorrupt(f"{manifest.checkpoint_id}: {entry.path} is missing") from e
            if size != entry.size:
                raise CheckpointCorrupt(
                    f"{manifest.checkpoint_id}: {entry.path} has {size} bytes, manifest says {entry.size}")
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                raise CheckpointCorrupt(f"{manifest.checkpoint_id}: {entry.path} fails its sha256 check")

    def list_checkpoint_ids(self) -> list[str]:
        if not self.checkpoints.exists():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir() if p.is_dir())

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        shutil.rmtree(self.checkpoint_dir(checkpoint_id), ignore_errors=True)
