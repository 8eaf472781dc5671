"""What the checkpoint package offers the rest of Tensile: the value types (manifest, commit
record, a save's result), the exception tree, and the Tier protocol every durable tier (a shared
directory, S3) implements, with what every tier says when a checkpoint is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from tensile.errors import MembershipChange, NotRetryable

FORMAT_VERSION = 3
"""Written into every manifest. Version 3 adds each file's per-chunk sha256 (checked by every
rank as it reads, docs/design/checkpoints.md); version 2 checkpoints load and are verified whole at
round start, as they were; version 1 (DeepSpeed's own files only) is read and upgraded in memory;
versions this code does not know are refused, naming both."""
READABLE_FORMAT_VERSIONS = (1, 2, 3)

LAYOUT_DEEPSPEED = "deepspeed"
"""DeepSpeed's own checkpoint files under `state/`: ZeRO-0, and every version-1 checkpoint."""
LAYOUT_SHARDED = "tensile-sharded"
"""ZeRO 1–3 slices keyed by parameter (tensile.checkpoint.sharded): loads at any worker count."""
DEEPSPEED_TAG = "state"
"""DeepSpeed writes its files under `<checkpoint>/<tag>/`: Tensile's tag for them."""

MANIFEST = "manifest.json"
"""Each checkpoint's manifest, relative to its directory: written last."""
PIN = "pins/resume.json"
"""The rollback pin, relative to the tier's root."""
BAD_MARK = "bad.json"
"""Written into a checkpoint's directory when a load found it corrupt: no reader resumes from it."""


class CheckpointError(Exception):
    """Base of all checkpoint errors."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its manifest (missing, truncated or altered)."""


class CorruptOnLoad(CheckpointCorrupt):
    """Every rank of the group agrees: a chunk some rank read while loading did not match the
    manifest. The checkpoint is marked bad and the group re-forms from the one before it; no
    failure is spent (the data is wrong, not this worker)."""

    def __init__(self, what: str, findings: list[str]):
        self.what = what
        self.findings = findings
        more = f" and {len(findings) - 3} more" if len(findings) > 3 else ""
        super().__init__(f"{what} failed verification while loading: {'; '.join(findings[:3])}{more}")


class CheckpointIncompatible(CheckpointError, NotRetryable):
    """The checkpoint cannot be resumed by this job as configured (another model, ZeRO stage,
    or a reshard that is not supported). Not retryable: the run stops and says what differs."""


class FencingError(CheckpointError, MembershipChange):
    """Another worker group published first: this group is stale and must stop.

    Not retryable: retrying would fork the run's history.
    """


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    """Relative to the checkpoint's directory."""
    size: int
    sha256: str
    """Of the whole file."""
    chunk_size: int = 0
    """Bytes per chunk of `chunks` (0: a version-2 entry, verified whole)."""
    chunks: tuple[str, ...] = ()
    """sha256 of each `chunk_size` bytes of the file, in order (the last chunk may be shorter)."""

    @classmethod
    def from_dict(cls, data: dict) -> "FileEntry":
        return cls(**{**data, "chunks": tuple(data.get("chunks", ()))})

    @property
    def chunked(self) -> bool:
        """Carries a hash for every chunk of its size, so a reader can verify what it reads."""
        return self.chunk_size > 0 and len(self.chunks) == -(-self.size // self.chunk_size)


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
    precision: str = "fp32"
    """The precision it was trained in (fp32, bf16, fp16); manifests written before the field
    existed were all fp32."""

    @property
    def verified_on_read(self) -> bool:
        """Every rank checks the chunks it reads as it loads (the sharded layout of version 3),
        so the round start checks only that the files are there at their sizes. DeepSpeed's own
        files are read by DeepSpeed's loader, not through Tensile's ranges: verified whole first."""
        return self.layout == LAYOUT_SHARDED and bool(self.files) and all(e.chunked for e in self.files)

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
        data["files"] = tuple(FileEntry.from_dict(f) for f in data["files"])
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRecord:
    """One entry of the commit log: `commits/<seq>` names the checkpoint published at seq."""

    seq: int
    checkpoint_id: str
    step: int
    group_token: str
    """Random id of the worker group (rendezvous round) that published it."""
    epoch: int = 0
    """The epoch the publishing group claimed at its round start (0: written before epochs)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CommitRecord":
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochClaim:
    """`epochs/<epoch>`, created exclusively by a group's rank 0 at its round start. A commit of
    an older epoch at a sequence number past `head_seen` was published by a stale group after
    this one began: every reader ignores it, and this group publishes past it."""

    epoch: int
    head_seen: int
    """The commit log's head when the epoch was claimed."""
    group_token: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EpochClaim":
        return cls(**json.loads(text))


# ---- the storage interface that a tier (a directory, S3) offers the catalog and the trainer ----

class TierCommitLog(Protocol):
    """A run's commit log: `publish` creates `commits/<seq>` only if no one has (the fence)."""

    def sequence_numbers(self) -> list[int]: ...
    def head(self) -> int: ...
    def read(self, seq: int) -> CommitRecord: ...
    def newest_first(self) -> Iterator[tuple[int, CommitRecord | None, str | None]]: ...
    def publish(self, record: CommitRecord) -> None: ...
    def claim_epoch(self, claim: EpochClaim) -> bool: ...
    def epoch_claims(self, newer_than: int = 0) -> list[EpochClaim]: ...


ReadRange = Callable[[int, int], bytes | memoryview]
"""read_range(offset, length) -> exactly `length` bytes of one file (bytes, or a read-only view
of them where a reader avoids a copy)."""


class RangeReader(Protocol):
    """Byte ranges of one checkpoint's files, wherever the checkpoint is: what loaders read
    shards through (a `pread` on a directory tier, ranged GETs on S3)."""

    def ranges(self, rel_path: str) -> ReadRange: ...

    def close(self) -> None: ...


class Tier(Protocol):
    """Where checkpoints live durably: DirectoryTier (a shared filesystem) or S3Tier."""

    url: str
    """Where the tier is, for messages (a directory path or s3://bucket/prefix)."""
    commit_log: TierCommitLog

    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry: ...
    def write_manifest(self, manifest: Manifest) -> None: ...
    def read_manifest(self, checkpoint_id: str) -> Manifest: ...
    def verify(self, manifest: Manifest, *, contents: bool = True) -> None:
        """CheckpointCorrupt unless every file is there at its size and, with `contents`, its
        sha256 matches (reading every byte)."""
        ...

    def mark_bad(self, checkpoint_id: str, record: dict) -> None:
        """Record durably that the checkpoint failed verification (BAD_MARK), saying why."""
        ...

    def bad_mark(self, checkpoint_id: str) -> dict | None:
        """The checkpoint's bad mark, or None."""
        ...
    def read_range(self, checkpoint_id: str, rel_path: str, offset: int, length: int) -> bytes: ...
    def fetch_file(self, checkpoint_id: str, rel_path: str, target: Path) -> None: ...
    def list_checkpoint_ids(self) -> list[str]: ...
    def delete_checkpoint(self, checkpoint_id: str) -> None: ...
    def read_pin(self) -> dict | None: ...
    def write_pin(self, data: dict) -> None: ...

    def shared_directory(self, checkpoint_id: str) -> Path | None:
        """The checkpoint's directory when the tier is a filesystem this process sees (files can
        be opened, and written beside, in place); None for an object store."""
        ...

    def local_view(self, manifest: Manifest, scratch: Path) -> Path:
        """A local directory holding the checkpoint's files, for readers that need real files
        (DeepSpeed's loader): the checkpoint itself where it is local, else a copy in `scratch`."""
        ...

    def range_reader(self, manifest: Manifest, local_copies: list[Path] | None = None) -> RangeReader:
        """Byte ranges of the checkpoint's files; from this node's own copies (`local_copies`:
        directories holding files of the same relative paths) where they still match in size."""
        ...


# ---- what every tier says when a checkpoint is not as its manifest says --------------------

def parse_manifest(checkpoint_id: str, text: str | bytes) -> Manifest:
    """The manifest stored for `checkpoint_id`, or CheckpointCorrupt saying what is wrong with it."""
    try:
        manifest = Manifest.from_json(text)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointCorrupt(f"{checkpoint_id}: unreadable manifest: {e}") from e
    except CheckpointCorrupt as e:  # an unknown format version: say which checkpoint
        raise CheckpointCorrupt(f"{checkpoint_id}: {e}") from e
    if manifest.checkpoint_id != checkpoint_id:
        raise CheckpointCorrupt(f"{checkpoint_id}: manifest names {manifest.checkpoint_id}")
    return manifest


def parse_bad_mark(text: str | bytes) -> dict:
    """A bad mark's record; one that cannot be read still marks the checkpoint bad."""
    try:
        data = json.loads(text)
    except ValueError:
        return {"reason": f"unreadable {BAD_MARK}"}
    return data if isinstance(data, dict) else {"reason": str(data)}


def no_manifest(checkpoint_id: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{checkpoint_id}: no manifest (the save never finished)")


def missing_file(checkpoint_id: str, rel_path: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{checkpoint_id}: {rel_path} is missing")


def wrong_size(checkpoint_id: str, entry: FileEntry, size: int) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{checkpoint_id}: {entry.path} has {size} bytes, manifest says {entry.size}")


def wrong_sha256(checkpoint_id: str, entry: FileEntry) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{checkpoint_id}: {entry.path} fails its sha256 check")


def wrong_chunk(checkpoint_id: str, entry: FileEntry, index: int) -> CheckpointCorrupt:
    begin = index * entry.chunk_size
    end = min(begin + entry.chunk_size, entry.size)
    return CheckpointCorrupt(f"{checkpoint_id}: {entry.path} chunk {index} (bytes {begin}..{end}) fails its "
                             f"sha256 check")


def check_range(checkpoint_id: str, rel_path: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"{checkpoint_id}/{rel_path}: read_range needs offset >= 0 and length >= 0, "
                         f"got offset={offset} length={length}")


def whole_range(checkpoint_id: str, rel_path: str, offset: int, length: int, data: bytes) -> bytes:
    if len(data) != length:
        raise short_read(checkpoint_id, rel_path, offset, length, len(data))
    return data


def short_read(checkpoint_id: str, rel_path: str, offset: int, length: int, got: int) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"{checkpoint_id}: {rel_path} ends before bytes {offset}..{offset + length} "
                             f"(got {got} of {length}): the file is shorter than its reader expects")


def partial_beside(target: Path) -> Path:
    """Where a download to `target` is written before it is renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(target.name + ".partial")


# ---- what a save returns ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class SaveResult:
    """How one rank's part of one save ended: returned by a synchronous save, and handed back
    once, on the training thread, for a background save (`EngineCheckpointer.poll`/`wait`)."""

    checkpoint_id: str
    step: int
    reason: str
    """periodic, rebalance, stop or final."""
    asynchronous: bool
    bytes: float
    """This rank's bytes for a background save; every rank's for a synchronous one."""
    stall_s: float
    """How long the training loop was blocked by it."""
    published: bool = False
    """This process wrote the commit record (rank 0, once every rank's files were durable)."""
    seq: int | None = None
    """The commit log position it was published at."""
    write_s: float | None = None
    persist_s: float | None = None
    """Until this rank's files were durable on the tier (None: it failed before)."""
    durable_s: float | None = None
    """Until published (rank 0 of a background save)."""
    fenced: str | None = None
    """Another worker group published first: this group is stale (why)."""
    error: str | None = None
    """Why a background save failed, as `Type: message` (the next save tries again)."""
