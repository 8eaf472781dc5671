"""Sharded token datasets: fixed-length samples in raw shard files described by index.json.

A dataset lives at any fsspec URL; the index is written last, so a half-written dataset is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
import os
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from tensile.errors import NotRetryable

INDEX_FILENAME = "index.json"
DATASET_FORMAT = "tensile-tokens"
DATASET_FORMAT_VERSION = 1
_SUPPORTED_DTYPES = ("uint16", "uint32")
_HASH_CHUNK_BYTES = 8 << 20
_HEADER_FIELDS = ("format", "format_version", "dtype", "seq_len", "vocab_size", "num_samples")


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


def compute_data_version(header: dict[str, Any], shards: Sequence[dict[str, Any]]) -> str:
    """sha256 over the header fields and each shard's name, size and hash, in canonical JSON."""
    payload = {
        "header": {key: header[key] for key in sorted(header)},
        "shards": [
            {"file": shard["file"], "num_samples": shard["num_samples"], "sha256": shard["sha256"]}
            for shard in shards
        ],
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class TokenShardWriter:
    """Writes fixed-length token samples into shard files, then the index (on close)."""

    def __init__(self, url: str, *, seq_len: int, vocab_size: int, samples_per_shard: int) -> None:
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
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._closed = False

    @property
    def num_samples(self) -> int:
        return sum(shard["num_samples"] for shard in self._shards) + self._buffered

    def write(self, sample: np.ndarray | Sequence[int]) -> None:
        """Appends one sample of seq_len + 1 token ids, each in [0, vocab_size)."""
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
        self._buffer[self._buffered] = tokens
        self._buffered += 1
        if self._buffered == self.samples_per_shard:
            self._flush_shard()

    def _flush_shard(self) -> None:
        data = self._buffer[: self._buffered].tobytes()
        name = shard_filename(len(self._shards))
        with self._filesystem.open(f"{self._root}/{name}", "wb") as shard_file:
            shard_file.write(data)
        sha256 = hashlib.sha256(data).hexdigest()
        self._shards.append({"file": name, "num_samples": self._buffered, "sha256": sha256})
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
            "format_version": DATASET_FORMAT_VERSION,
            "dtype": self.dtype,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "num_samples": self.num_samples,
        }
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
        filesystem, self._root = fsspec.core.url_to_fs(url)
        index = self._load_index(filesystem)
        self.seq_len: int = index["seq_len"]
        self.sample_length = self.seq_len + 1
        self.vocab_size: int = index["vocab_size"]
        self.num_samples: int = index["num_samples"]
        self.data_version: str = index["data_version"]
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.shards: list[dict[str, Any]] = index["shards"]
        self._header = {key: index[key] for key in _HEADER_FIELDS}
        self._shard_starts = [0]
        for shard in self.shards:
            self._shard_starts.append(self._shard_starts[-1] + shard["num_samples"])
        self._is_local = isinstance(filesystem, LocalFileSystem)
        self._filesystem = filesystem
        self._memmaps: dict[int, np.memmap] = {}
        self._memmaps_pid = os.getpid()

    def _load_index(self, filesystem: fsspec.AbstractFileSystem) -> dict[str, Any]:
        index_path = f"{self._root}/{INDEX_FILENAME}"
        try:
            with filesystem.open(index_path, "r") as index_file:
                text = index_file.read()
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"no {INDEX_FILENAME} at {self.url}: the dataset was never generated or its writer did not "
                "finish; generate it with tensile.data.generate_corpus (or write it with TokenShardWriter)"
            ) from e
        try:
            index = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{INDEX_FILENAME} at {self.url} is not valid JSON: {e}") from e
        if index.get("format") != DATASET_FORMAT or index.get("format_version") != DATASET_FORMAT_VERSION:
            raise DatasetFormatError(
                f"{INDEX_FILENAME} at {self.url} has format {index.get('format')!r} version "
                f"{index.get('format_version')!r}; this code reads format {DATASET_FORMAT!r} "
                f"version {DATASET_FORMAT_VERSION}"
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
        header = {key: index[key] for key in _HEADER_FIELDS}
        if compute_data_version(header, index["shards"]) != index["data_version"]:
            raise DatasetFormatError(
                f"data_version in {INDEX_FILENAME} at {self.url} does not match the index's contents"
            )
        return index

    def __len__(self) -> int:
        return self.num_samples

    def _shard_path(self, shard_number: int) -> str:
        return f"{self._root}/{self.shards[shard_number]['file']}"

    def _locate(self, sample_id: Any) -> tuple[int, int]:
        sample_id = operator.index(sample_id)
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(
                f"sample id {sample_id} is out of range for a dataset of {self.num_samples} samples"
            )
        shard_number = bisect.bisect_right(self._shard_starts, sample_id) - 1
        return shard_number, sample_id - self._shard_starts[shard_number]

    def _memmap(self, shard_number: int) -> np.memmap:
        # A forked or unpickled copy maps the files itself rather than sharing the parent's handles.
        if self._memmaps_pid != os.getpid():
            self._memmaps, self._memmaps_pid = {}, os.getpid()
        if shard_number not in self._memmaps:
            path = self._shard_path(shard_number)
            rows = self.shards[shard_number]["num_samples"]
            expected_bytes = rows * self.sample_length * self.dtype.itemsize
            actual_bytes = os.path.getsize(path)
            if actual_bytes != expected_bytes:
                raise DatasetIntegrityError(
                    f"shard {self.shards[shard_number]['file']} of {self.url} has {actual_bytes} bytes; "
                    f"the index implies {expected_bytes}"
                )
            self._memmaps[shard_number] = np.memmap(
                path, dtype=self.dtype, mode="r", shape=(rows, self.sample_length)
            )
        return self._memmaps[shard_number]

    def read(self, sample_ids: Sequence[int]) -> torch.Tensor:
        """Token ids of the given samples, as a LongTensor [len(sample_ids), seq_len + 1]."""
        locations = [self._locate(sample_id) for sample_id in sample_ids]
        samples = np.empty((len(locations), self.sample_length), dtype=np.int64)
        if self._is_local:
            for row, (shard_number, offset) in enumerate(locations):
                samples[row] = self._memmap(shard_number)[offset]
        elif locations:
            sample_bytes = self.sample_length * self.dtype.itemsize
            paths = [self._shard_path(shard_number) for shard_number, _ in locations]
            starts = [offset * sample_bytes for _, offset in locations]
            ends = [start + sample_bytes for start in starts]
            # One batched range request per sample: async backends (s3) fetch them concurrently.
            chunks = self._filesystem.cat_ranges(paths, starts, ends, on_error="raise")
            for row, ((shard_number, _), chunk) in enumerate(zip(locations, chunks)):
                if len(chunk) != sample_bytes:
                    raise DatasetIntegrityError(
                        f"shard {self.shards[shard_number]['file']} of {self.url} "
                        "is shorter than its index says"
                    )
                samples[row] = np.frombuffer(chunk, dtype=self.dtype)
        return torch.from_numpy(samples)

    def verify(self) -> None:
        """Re-hashes every shard and checks the index's data_version; raises on any mismatch."""
        if compute_data_version(self._header, self.shards) != self.data_version:
            raise DatasetIntegrityError(
                f"data_version in {INDEX_FILENAME} at {self.url} does not match its contents"
            )
        for shard in self.shards:
            digest = hashlib.sha256()
            with self._filesystem.open(f"{self._root}/{shard['file']}", "rb") as shard_file:
                while chunk := shard_file.read(_HASH_CHUNK_BYTES):
                    digest.update(chunk)
            if digest.hexdigest() != shard["sha256"]:
                raise DatasetIntegrityError(
                    f"shard {shard['file']} of {self.url} has sha256 {digest.hexdigest()}, "
                    f"index records {shard['sha256']}"
                )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_memmaps"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._memmaps_pid = os.getpid()
