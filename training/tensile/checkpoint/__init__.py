"""Durable, fenced checkpoints: a manifest written last, a commit log created exclusively.

The public names are re-exported here; docs/design/layout.md says which module holds what.
"""

from tensile.checkpoint.api import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointIncompatible,
    CorruptOnLoad,
    CommitRecord,
    FileEntry,
    FencingError,
    Manifest,
    FORMAT_VERSION,
    LAYOUT_DEEPSPEED,
    LAYOUT_SHARDED,
    SaveResult,
    Tier,
)
from tensile.checkpoint.commit_log import CommitLog
from tensile.checkpoint.directory_tier import DirectoryTier
from tensile.checkpoint.catalog import Catalog, ResumePoint
from tensile.checkpoint.locations import open_tier

__all__ = [
    "Catalog", "CheckpointCorrupt", "CheckpointError", "CheckpointIncompatible", "CommitLog", "CommitRecord", "CorruptOnLoad",
    "DirectoryTier",
    "FileEntry", "FencingError", "FORMAT_VERSION", "LAYOUT_DEEPSPEED", "LAYOUT_SHARDED", "Manifest", "ResumePoint",
    "SaveResult", "Tier", "open_tier",
]
