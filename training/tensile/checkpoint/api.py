"""Checkpoint value types and the exception tree shared by tiers, the commit log and the trainer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

FORMAT_VERSION = 2
"""Written into every manifest. Version 1 (DeepSpeed's own files only) is read and upgraded in
memory; versions this code does not know are refused, naming both."""
READABLE_FORMAT_VERSIONS = (1, 2)

LAYOUT_DEEPSPEED = "deepspeed"
"""DeepSpeed's own checkpoint files under `state/`: ZeRO-0, and every version-1 checkpoint."""
LAYOUT_SHARDED = "tensile-sharded"
"""ZeRO 1–3 slices keyed by parameter (tensile.sharded_state): loads at any worker count."""


class CheckpointError(Exception):
    """Base of all checkpoint errors."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its manifest (missing, truncated or altered)."""


class CheckpointIncompatible(CheckpointError):
    """The checkpoint cannot be resumed by this job as configured (another model, ZeRO stage,
    or a reshard that is not supported). Not retryable: the run stops and says what differs."""


class FencingError(CheckpointError):
    """Another worker group published first: this group is stale and must stop.

    Not retryable: retrying would fork the run's history.
    """


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    """Relative to the checkpoint's directory."""
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    checkpoint_id: str
    parent_id: str | None
    step: int
    """Optimizer steps completed when the checkpoint was taken."""
    world_size: int
    zero_stage: int
    files: tuple[FileEntry, ...]
    config_hash: str
    data_version: str
    model_hash: str = ""
    """Hash of the model's shape: a checkpoint of another model is refused by name."""
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created_at: float = 0.0
    reason: str = "periodic"
    """Why it was taken: periodic, final, or stop (an emergency save on a stop request)."""
    branch: str = ""
    """The rollback this checkpoint descends from ("" on the original line): training after
    `tensile checkpoint rollback ID` starts a branch named ID."""
    code_version: str = ""
    """The training code's commit (baked into the image at build time)."""
    layout: str = LAYOUT_DEEPSPEED
    """How the training state is stored: LAYOUT_DEEPSPEED or LAYOUT_SHARDED."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise CheckpointCorrupt(
                f"manifest format version {version} is not supported by this Tensile "
                f"(writes version {FORMAT_VERSION}, reads versions "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}); resume it with the Tensile that wrote it")
        if version == 1:  # upgrade: version 1 had one layout, DeepSpeed's own files
            data.setdefault("layout", LAYOUT_DEEPSPEED)
        data["files"] = tuple(FileEntry(**f) for f in data["files"])
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRecord:
    """One entry of the commit log: `commits/<seq>` names the checkpoint published at seq."""

    seq: int
    checkpoint_id: str
    step: int
    group_token: str
    """Random id of the worker group (rendezvous round) that published it."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CommitRecord":
        return cls(**json.loads(text))


# ---- the storage interface that a tier (a directory, S3) offers the catalog and the trainer ----

class TierCommitLog(Protocol):
    """A run's commit log: `publish` creates `commits/<seq>` only if no one has (the fence)."""

    def sequence_numbers(self) -> list[int]: ...
    def head(self) -> int: ...
    def read(self, seq: int) -> CommitRecord: ...
    def newest_first(self) -> Iterator[tuple[int, CommitRecord | None, str | None]]: ...
    def publish(self, record: CommitRecord) -> None: ...


class Tier(Protocol):
    """Where checkpoints live durably: DirectoryTier (a shared filesystem) or S3Tier."""

    url: str
    """Where the tier is, for messages (a directory path or s3://bucket/prefix)."""
    commit_log: TierCommitLog

    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry: ...
    def write_manifest(self, manifest: Manifest) -> None: ...
    def read_manifest(self, checkpoint_id: str) -> Manifest: ...
    def verify(self, manifest: Manifest) -> None: ...
    def read_range(self, checkpoint_id: str, rel_path: str, offset: int, length: int) -> bytes: ...
    def fetch_file(self, checkpoint_id: str, rel_path: str, target: Path) -> None: ...
    def list_checkpoint_ids(self) -> list[str]: ...
    def delete_checkpoint(self, checkpoint_id: str) -> None: ...
    def read_pin(self) -> dict | None: ...
    def write_pin(self, data: dict) -> None: ...
