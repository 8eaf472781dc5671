"""Sharded token datasets: fixed-length samples in raw shard files described by index.json, with
an optional loss mask per token (format version 2; version 1, without masks, still loads).

A dataset lives in a directory, on S3 or at any fsspec URL; the index is written last, so a
half-written dataset is refused. docs/design/data.md describes the format.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch

from .storage import ShortFileError, open_store

from tensile.errors import NotRetryable

INDEX_FILENAME = "index.json"
DATASET_FORMAT = "tensile-tokens"
DATASET_FORMAT_VERSION = 2
"""Written for datasets with loss masks. Without masks the writer still writes version 1, byte for
byte what earlier code wrote, so their data_version (which checkpoints record) does not change."""
READABLE_FORMAT_VERSIONS = (1, 2)
_SUPPORTED_DTYPES = ("uint16", "uint32")
_HASH_CHUNK_BYTES = 8 << 20
_HEADER_FIELDS = {1: ("format", "format_version", "dtype", "seq_len", "vocab_size", "num_samples"),
                  2: ("format", "format_version", "dtype", "seq_len", "vocab_size", "num_samples", "loss_mask")}


class DatasetError(NotRetryable):
    """Base class for problems with a token dataset on storage (no retry fixes them)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The URL holds no index.json: never generated, or generation did not finish."""


class DatasetFormatError(DatasetError, ValueError):
    """index.json is not a tensile-tokens index this code can read."""


class DatasetIntegrityError(DatasetError):
    """Shard contents do not match what the index records."""


def token_dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest unsigned dtype that holds every token id of the vocabulary."""
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise ValueError(f"vocab_size must be at most 2**32, got {vocab_size}")


def shard_filename(shard_number: int) -> str:
    return f"shard-{shard_number:05d}.bin"


def mask_filename(shard_number: int) -> str:
    return f"shard-{shard_number:05d}.mask"


def mask_row_bytes(sample_length: int) -> int:
    """A sample's mask is one bit per token (numpy's packbits, most significant bit first)."""
    return -(-sample_length // 8)


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples as the loop takes them: tokens, and which next-token targets count."""

    tokens: torch.Tensor
    """LongTensor [n, seq_len + 1]."""
    loss_mask: torch.Tensor
    """float32 [n, seq_len]: 1 where predicting tokens[:, 1:] counts towards the loss."""


def compute_data_version(header: dict[str, Any], shards: Sequence[dict[str, Any]]) -> str:
    """sha256 over the header fields and each shard's name, size and hash, in canonical JSON."""
    payload = {
        "header": {key: header[key] for key in sorted(header)},
        "shards": [
            {key: shard[key] for key in ("file", "num_samples", "sha256", "mask_file", "mask_sha256") if key in shard}
            for shard in shards
        ],
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class TokenShardWriter:
    """Writes fixed-length token samples (and, with loss_mask=True, a mask each) into shard files,
    then the index (on close)."""

    def __init__(self, url: str, *, seq_len: int, vocab_size: int, samples_per_shard: int,
                 loss_mask: bool = False) -> None:
        _check_positive_int("seq_len", seq_len)
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("samples_per_shard", samples_per_shard)
        self.url = url
        self.seq_len = seq_len
        self.sample_length = seq_len + 1
        self.vocab_size = vocab_size
        self.samples_per_shard = samples_per_shard
        self.dtype = token_dtype_for_vocab(vocab_size)
        self._filesystem, self._root = fsspec.core.url_to_fs(url)
        self._filesystem.makedirs(self._root, exist_ok=True)
        # Rewriting in place: drop the old index first so a crash mid-rewrite cannot leave
        # an index that describes shards which have since been overwritten.
        index_path = f"{self._root}/{INDEX_FILENAME}"
        if self._filesystem.exists(index_path):
            self._filesystem.rm(index_path)
        # Shards are little-endian on every host, so readers never need to know the writer's byte order.
        little_endian = np.dtype(self.dtype).newbyteorder("<")
        self._buffer = np.empty((samples_per_shard, self.sample_length), dtype=little_endian)
        self.loss_mask = loss_mask
        self._mask_buffer = np.empty((samples_per_shard, self.sample_length), dtype=bool) if loss_mask else None
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._closed = False

    @property
    def num_samples(self) -> int:
        return sum(shard["num_samples"] for shard in self._shards) + self._buffered

    def write(self, sample: np.ndarray | Sequence[int], loss_mask: np.ndarray | Sequence[bool] | None = None) -> None:
        """Appends one sample of seq_len + 1 token ids, each in [0, vocab_size), and, for a writer
        made with loss_mask=True, its mask: one flag per token, true where the token is a target
        whose prediction counts (the first token is never a target; its flag is kept as given)."""
        if self._closed:
            raise RuntimeError(f"TokenShardWriter for {self.url} is already closed")
        tokens = np.asarray(sample)
        if tokens.shape != (self.sample_length,):
            raise ValueError(
                f"sample must be 1-D with seq_len + 1 = {self.sample_length} tokens, got shape {tokens.shape}"
            )
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"sample must hold integer token ids, got dtype {tokens.dtype}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"sample holds token id {bad}, outside [0, vocab_size={self.vocab_size})")
        if (loss_mask is not None) != self.loss_mask:
            raise ValueError("this writer was made with loss_mask=True: give every sample a mask" if self.loss_mask
                             else "this writer was made without loss masks: make it with loss_mask=True")
        if loss_mask is not None:
            flags = np.asarray(loss_mask)
            if flags.shape != (self.sample_length,):
                raise ValueError(f"loss_mask must have one flag per token ({self.sample_length}), "
                                 f"got shape {flags.shape}")
            self._mask_buffer[self._buffered] = flags.astype(bool)
        self._buffer[self._buffered] = tokens
        self._buffered += 1
        if self._buffered == self.samples_per_shard:
            self._flush_shard()

    def _flush_shard(self) -> None:
        data = self._buffer[: self._buffered].tobytes()
        name = shard_filename(len(self._shards))
        with self._filesystem.open(f"{self._root}/{name}", "wb") as shard_file:
            shard_file.write(data)
        shard = {"file": name, "num_samples": self._buffered, "sha256": hashlib.sha256(data).hexdigest()}
        if self._mask_buffer is not None:
            mask_bytes = np.packbits(self._mask_buffer[: self._buffered], axis=1).tobytes()
            shard["mask_file"] = mask_filename(len(self._shards))
            with self._filesystem.open(f"{self._root}/{shard['mask_file']}", "wb") as mask_file:
                mask_file.write(mask_bytes)
            shard["mask_sha256"] = hashlib.sha256(mask_bytes).hexdigest()
        self._shards.append(shard)
        self._buffered = 0

    def close(self) -> None:
        """Flushes the last partial shard and writes index.json, which makes the dataset readable."""
        if self._closed:
            return
        if self.num_samples == 0:
            raise ValueError(f"no samples were written to {self.url}; refusing to write an empty dataset")
        if self._buffered:
            self._flush_shard()
        header = {
            "format": DATASET_FORMAT,
            "format_version": DATASET_FORMAT_VERSION if self.loss_mask else 1,
            "dtype": self.dtype,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "num_samples": self.num_samples,
        }
        if self.loss_mask:
            header["loss_mask"] = True
        index = {**header, "shards": self._shards, "data_version": compute_data_version(header, self._shards)}
        with self._filesystem.open(f"{self._root}/{INDEX_FILENAME}", "w") as index_file:
            json.dump(index, index_file, indent=1)
        self._closed = True

    def abort(self) -> None:
        """Stops without writing the index; shards already written stay unreadable."""
        self._closed = True

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TokenDataset:
    """Random access by global sample id to a dataset written by TokenShardWriter."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store = open_store(url)
        index = self._load_index()
        self.format_version: int = index["format_version"]
        self.seq_len: int = index["seq_len"]
        self.sample_length = self.seq_len + 1
        self.vocab_size: int = index["vocab_size"]
        self.num_samples: int = index["num_samples"]
        self.data_version: str = index["data_version"]
        self.has_loss_mask: bool = bool(index.get("loss_mask", False))
        """False for version-1 datasets and any written without masks: every target counts."""
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.shards: list[dict[str, Any]] = index["shards"]
        self._header = {key: index[key] for key in _HEADER_FIELDS[self.format_version]}
        self._shard_starts = [0]
        for shard in self.shards:
            self._shard_starts.append(self._shard_starts[-1] + shard["num_samples"])

    def _load_index(self) -> dict[str, Any]:
        try:
            text = self.store.read_text(INDEX_FILENAME)
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"no {INDEX_FILENAME} at {self.url}: the dataset was never generated or its writer did not "
                "finish; generate it with tensile.data.generate_corpus, convert yours with "
                "`tensile data prepare` (or write it with TokenShardWriter)"
            ) from e
        try:
            index = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{INDEX_FILENAME} at {self.url} is not valid JSON: {e}") from e
        if index.get("format") != DATASET_FORMAT or index.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise DatasetFormatError(
                f"{INDEX_FILENAME} at {self.url} has format {index.get('format')!r} version "
                f"{index.get('format_version')!r}; this code reads format {DATASET_FORMAT!r} "
                f"version {' or '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            )
        for key in ("dtype", "seq_len", "vocab_size", "num_samples", "shards", "data_version"):
            if key not in index:
                raise DatasetFormatError(f"{INDEX_FILENAME} at {self.url} lacks the field {key!r}")
        if index["dtype"] not in _SUPPORTED_DTYPES:
            raise DatasetFormatError(
                f"{INDEX_FILENAME} at {self.url} has dtype {index['dtype']!r}; "
                f"expected one of {_SUPPORTED_DTYPES}"
            )
        shard_total = sum(shard["num_samples"] for shard in index["shards"])
        if shard_total != index["num_samples"]:
            raise DatasetFormatError(
                f"{INDEX_FILENAME} at {self.url} says num_samples={index['num_samples']} "
                f"but its shards hold {shard_total}"
            )
        if index.get("loss_mask") and not all("mask_file" in shard for shard in index["shards"]):
            raise DatasetFormatError(f"{INDEX_FILENAME} at {self.url} has loss_mask set but a shard without a mask_file")
        header = {key: index[key] for key in _HEADER_FIELDS[index["format_version"]] if key in index}
        if compute_data_version(header, index["shards"]) != index["data_version"]:
            raise DatasetFormatError(
                f"data_version in {INDEX_FILENAME} at {self.url} does not match the index's contents"
            )
        return index

    def __len__(self) -> int:
        return self.num_samples

    def _locate(self, sample_id: Any) -> tuple[int, int]:
        sample_id = operator.index(sample_id)
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(
                f"sample id {sample_id} is out of range for a dataset of {self.num_samples} samples"
            )
        shard_number = bisect.bisect_right(self._shard_starts, sample_id) - 1
        return shard_number, sample_id - self._shard_starts[shard_number]

    def _read_rows(self, file_key: str, row_bytes: int, sample_ids: Sequence[int]) -> np.ndarray:
        """uint8 [len(sample_ids), row_bytes] of each sample's row in its shard's file_key file."""
        locations = [self._locate(sample_id) for sample_id in sample_ids]
        out = np.empty((len(locations), row_bytes), dtype=np.uint8)
        by_shard: dict[int, list[int]] = {}
        for position, (shard_number, _) in enumerate(locations):
            by_shard.setdefault(shard_number, []).append(position)
        for shard_number, positions in by_shard.items():
            shard = self.shards[shard_number]
            try:
                out[positions] = self.store.read_rows(shard[file_key], row_bytes, shard["num_samples"],
                                                      [locations[p][1] for p in positions])
            except ShortFileError as e:
                raise DatasetIntegrityError(f"{e} (dataset {self.url}): the file is shorter than its index says") from e
        return out

    def read(self, sample_ids: Sequence[int]) -> torch.Tensor:
        """Token ids of the given samples, as a LongTensor [len(sample_ids), seq_len + 1]."""
        rows = self._read_rows("file", self.sample_length * self.dtype.itemsize, sample_ids)
        return torch.from_numpy(rows.view(self.dtype).astype(np.int64).reshape(len(rows), self.sample_length))

    def read_loss_mask(self, sample_ids: Sequence[int]) -> torch.Tensor:
        """float32 [len(sample_ids), seq_len]: 1 where predicting token t + 1 of a sample counts; all
        ones for a dataset without masks."""
        if not self.has_loss_mask:
            for sample_id in sample_ids:
                self._locate(sample_id)
            return torch.ones(len(sample_ids), self.seq_len, dtype=torch.float32)
        packed = self._read_rows("mask_file", mask_row_bytes(self.sample_length), sample_ids)
        flags = np.unpackbits(packed, axis=1, count=self.sample_length)[:, 1:]
        return torch.from_numpy(flags.astype(np.float32))

    def read_batch(self, sample_ids: Sequence[int]) -> SampleBatch:
        return SampleBatch(self.read(sample_ids), self.read_loss_mask(sample_ids))

    def count_targets(self, sample_ids: Sequence[int]) -> int:
        """How many next-token targets of the given samples count towards the loss."""
        if not self.has_loss_mask:
            return len(sample_ids) * self.seq_len
        return int(self.read_loss_mask(sample_ids).sum().item())

    def verify(self) -> None:
        """Re-hashes every shard (and mask) and checks the index's data_version; raises on any mismatch."""
        if compute_data_version(self._header, self.shards) != self.data_version:
            raise DatasetIntegrityError(
                f"data_version in {INDEX_FILENAME} at {self.url} does not match its contents"
            )
        for shard in self.shards:
            for file_key, hash_key in (("file", "sha256"), ("mask_file", "mask_sha256")):
                if file_key not in shard:
                    continue
                digest = hashlib.sha256()
                for chunk in self.store.chunks(shard[file_key], _HASH_CHUNK_BYTES):
                    digest.update(chunk)
                if digest.hexdigest() != shard[hash_key]:
                    raise DatasetIntegrityError(
                        f"shard {shard[file_key]} of {self.url} has sha256 {digest.hexdigest()}, "
                        f"index records {shard[hash_key]}"
                    )
