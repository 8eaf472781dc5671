"""Where a dataset's files are read from: a local directory (memory-mapped), S3 (ranged GETs through
boto3) or any other fsspec URL. Remote reads coalesce adjacent rows into one request.

s3:// goes through boto3, not fsspec's s3fs: every s3fs release needs aiobotocore, whose newest
release (3.10.0) pins botocore<1.43.118, and Tensile pins botocore==1.44.8 (docs/design/data.md).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

MAX_REQUEST_BYTES = 8 << 20
"""A run of adjacent rows is cut into requests of at most this many bytes."""
_REMOTE_READERS = 8
"""Ranged requests of one read in flight at once."""


@dataclass(frozen=True, slots=True)
class RowRun:
    """Rows [first, first + count) of one file, fetched by one request."""

    file: str
    first: int
    count: int


def coalesce(locations: Sequence[tuple[str, int]], row_bytes: int,
             max_request_bytes: int = MAX_REQUEST_BYTES) -> list[RowRun]:
    """The fewest runs of adjacent rows, each at most max_request_bytes, covering every (file, row)."""
    max_rows = max(1, max_request_bytes // row_bytes)
    runs: list[RowRun] = []
    for file, row in sorted(set(locations)):
        last = runs[-1] if runs else None
        if last is not None and last.file == file and row == last.first + last.count and last.count < max_rows:
            runs[-1] = RowRun(file, last.first, last.count + 1)
        else:
            runs.append(RowRun(file, row, 1))
    return runs


class DatasetStore(Protocol):
    """The files of one dataset directory, by name."""

    url: str

    def read_text(self, name: str) -> str:
        """The whole file as text; FileNotFoundError if it is not there."""

    def read_rows(self, name: str, row_bytes: int, num_rows: int, rows: Sequence[int]) -> np.ndarray:
        """uint8 [len(rows), row_bytes]: the given rows of a file of num_rows fixed-size rows."""

    def chunks(self, name: str, chunk_bytes: int) -> Iterator[bytes]:
        """The whole file, in order."""


class ShortFileError(Exception):
    """A file holds fewer bytes than its rows need (raised with the file's name and sizes)."""


def _rows_from_runs(locations: Sequence[tuple[str, int]], runs: Sequence[RowRun], blobs: Sequence[bytes],
                    row_bytes: int) -> np.ndarray:
    by_row: dict[tuple[str, int], np.ndarray] = {}
    for run, blob in zip(runs, blobs):
        if len(blob) != run.count * row_bytes:
            raise ShortFileError(f"{run.file}: rows {run.first}..{run.first + run.count - 1} need "
                                 f"{run.count * row_bytes} bytes, the read returned {len(blob)}")
        block = np.frombuffer(blob, dtype=np.uint8).reshape(run.count, row_bytes)
        for offset in range(run.count):
            by_row[(run.file, run.first + offset)] = block[offset]
    out = np.empty((len(locations), row_bytes), dtype=np.uint8)
    for index, location in enumerate(locations):
        out[index] = by_row[location]
    return out


class LocalStore:
    """A directory on this host: files are memory-mapped, once per process."""

    def __init__(self, url: str, root: str) -> None:
        self.url, self.root = url, root
        self._maps: dict[str, np.memmap] = {}
        self._maps_pid = os.getpid()

    def read_text(self, name: str) -> str:
        with open(f"{self.root}/{name}", encoding="utf-8") as file:
            return file.read()

    def _map(self, name: str, row_bytes: int, num_rows: int) -> np.memmap:
        # A forked or unpickled copy maps the files itself rather than sharing the parent's handles.
        if self._maps_pid != os.getpid():
            self._maps, self._maps_pid = {}, os.getpid()
        if name not in self._maps:
            path = f"{self.root}/{name}"
            actual = os.path.getsize(path)
            if actual != row_bytes * num_rows:
                raise ShortFileError(f"{name} has {actual} bytes; its {num_rows} rows need {row_bytes * num_rows}")
            self._maps[name] = np.memmap(path, dtype=np.uint8, mode="r", shape=(num_rows, row_bytes))
        return self._maps[name]

    def read_rows(self, name: str, row_bytes: int, num_rows: int, rows: Sequence[int]) -> np.ndarray:
        return np.asarray(self._map(name, row_bytes, num_rows)[np.asarray(rows, dtype=np.int64)])

    def chunks(self, name: str, chunk_bytes: int) -> Iterator[bytes]:
        with open(f"{self.root}/{name}", "rb") as file:
            while chunk := file.read(chunk_bytes):
                yield chunk

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["root"])


class _RangedStore(ABC):
    """Shared by the remote stores: rows become coalesced range requests."""

    url: str
    max_request_bytes = MAX_REQUEST_BYTES

    @abstractmethod
    def _get_ranges(self, runs: Sequence[RowRun], row_bytes: int) -> list[bytes]:
        """The bytes of each run, in order: one request (or one ranged read) per run."""

    def read_rows(self, name: str, row_bytes: int, num_rows: int, rows: Sequence[int]) -> np.ndarray:
        locations = [(name, row) for row in rows]
        runs = coalesce(locations, row_bytes, self.max_request_bytes)
        return _rows_from_runs(locations, runs, self._get_ranges(runs, row_bytes) if runs else [], row_bytes)


class FsspecStore(_RangedStore):
    """Any fsspec filesystem but local and S3 (memory:// in tests, gcs://, http:// ...)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._filesystem, self.root = fsspec.core.url_to_fs(url)

    def read_text(self, name: str) -> str:
        with self._filesystem.open(f"{self.root}/{name}", "r") as file:
            return file.read()

    def _get_ranges(self, runs: Sequence[RowRun], row_bytes: int) -> list[bytes]:
        # One batched call: async backends fetch the ranges concurrently.
        return self._filesystem.cat_ranges([f"{self.root}/{run.file}" for run in runs],
                                           [run.first * row_bytes for run in runs],
                                           [(run.first + run.count) * row_bytes for run in runs], on_error="raise")

    def chunks(self, name: str, chunk_bytes: int) -> Iterator[bytes]:
        with self._filesystem.open(f"{self.root}/{name}", "rb") as file:
            while chunk := file.read(chunk_bytes):
                yield chunk


class S3Store(_RangedStore):
    """s3://bucket/prefix through boto3 (tensile.s3): one ranged GET per run, several in flight.

    With no endpoint given, boto3 honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._objects = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def objects(self):
        if self._objects is None:  # boto3 loads only for datasets on S3
            from tensile.s3.objects import S3Objects

            self._objects = S3Objects(self.url)
        return self._objects

    def read_text(self, name: str) -> str:
        from tensile.s3.objects import is_missing

        try:
            return self.objects.get(self.objects.key(name)).decode("utf-8")
        except Exception as e:
            if is_missing(e):
                raise FileNotFoundError(f"{self.url}/{name}") from e
            raise

    def _get_ranges(self, runs: Sequence[RowRun], row_bytes: int) -> list[bytes]:
        objects = self.objects

        def get(run: RowRun) -> bytes:
            start = run.first * row_bytes
            return objects.get(objects.key(run.file), f"bytes={start}-{start + run.count * row_bytes - 1}")
        if len(runs) == 1:
            return [get(runs[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_REMOTE_READERS, thread_name_prefix="tensile-data-s3")
        return list(self._pool.map(get, runs))

    def chunks(self, name: str, chunk_bytes: int) -> Iterator[bytes]:
        body = self.objects.client.get_object(Bucket=self.objects.bucket, Key=self.objects.key(name))["Body"]
        while chunk := body.read(chunk_bytes):
            yield chunk

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])


def open_store(url: str) -> DatasetStore:
    if url.startswith("s3://"):
        return S3Store(url.rstrip("/"))
    filesystem, root = fsspec.core.url_to_fs(url)
    if isinstance(filesystem, LocalFileSystem):
        return LocalStore(url, root)
    return FsspecStore(url)
