"""Per-chunk sha256 of checkpoint files (format version 3): computed while a file is copied to
the tier, checked by each rank on exactly the chunks it reads while it loads.

A reshard reads byte ranges of other ranks' files, so one hash per whole file could only be
checked by reading every byte of it; a hash per fixed-size chunk is checked by whoever reads
that chunk, as it reads it. Ranges are widened to chunk boundaries for that.
"""

from __future__ import annotations

import hashlib

from tensile.checkpoint.api import FileEntry, Manifest, RangeReader, ReadRange, short_read, wrong_chunk

CHUNK_BYTES = 4 << 20
"""4 MiB: the widening a range read pays is at most two chunks; a 1 GB file's chunk list is 16 KB
of manifest; one chunk is a single ranged GET's worth on S3 and the tiers' copy buffer (why:
docs/design/checkpoints.md)."""


class FileHasher:
    """The sha256 of a file and of each of its `chunk_size` chunks, fed in pieces of any size."""

    def __init__(self, chunk_size: int = CHUNK_BYTES):
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        self.chunk_size = chunk_size
        self.size = 0
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0
        self._chunks: list[str] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._whole.update(view)
        self.size += len(view)
        while len(view):
            take = min(len(view), self.chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self.chunk_size:
                self._end_chunk()

    def _end_chunk(self) -> None:
        self._chunks.append(self._chunk.hexdigest())
        self._chunk, self._in_chunk = hashlib.sha256(), 0

    def entry(self, rel_path: str) -> FileEntry:
        """The file's manifest entry; call once, after the last `update`."""
        if self._in_chunk:
            self._end_chunk()
        return FileEntry(path=rel_path, size=self.size, sha256=self._whole.hexdigest(),
                         chunk_size=self.chunk_size, chunks=tuple(self._chunks))


def hash_bytes(rel_path: str, data: bytes, chunk_size: int = CHUNK_BYTES) -> FileEntry:
    hasher = FileHasher(chunk_size)
    hasher.update(data)
    return hasher.entry(rel_path)


class VerifiedFile:
    """A ReadRange over one file that returns only bytes whose chunks matched their sha256:
    each read is widened to whole chunks, and the last chunk read is kept, since the loader
    reads a file's slices mostly in order and neighbouring slices share a chunk."""

    def __init__(self, read: ReadRange, entry: FileEntry, checkpoint_id: str):
        self.read = read
        self.entry = entry
        self.checkpoint_id = checkpoint_id
        self.bytes_hashed = 0
        self._kept: tuple[int, bytes] = (-1, b"")

    def __call__(self, offset: int, length: int) -> memoryview | bytes:
        entry, size = self.entry, self.entry.chunk_size
        if offset + length > entry.size:
            raise short_read(self.checkpoint_id, entry.path, offset, length, max(0, entry.size - offset))
        if length == 0:
            return b""
        first, last = offset // size, (offset + length - 1) // size
        pieces, index = [], first
        if self._kept[0] == first:
            pieces.append(self._kept[1])
            index += 1
        if index <= last:
            begin, end = index * size, min((last + 1) * size, entry.size)
            raw = memoryview(self.read(begin, end - begin))
            for number in range(index, last + 1):
                chunk = raw[(number - index) * size:(number - index + 1) * size]
                if hashlib.sha256(chunk).hexdigest() != entry.chunks[number]:
                    raise wrong_chunk(self.checkpoint_id, entry, number)
            self.bytes_hashed += len(raw)
            pieces.append(raw)
            self._kept = (last, bytes(raw[(last - index) * size:]))
        start = offset - first * size
        # A view, not a copy: the loader copies the bytes into the engine's tensors at once.
        whole = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return memoryview(whole)[start:start + length]


class VerifiedRanges:
    """A RangeReader whose every byte has passed its chunk's sha256 (a version-3 manifest)."""

    def __init__(self, inner: RangeReader, manifest: Manifest):
        self.inner = inner
        self.checkpoint_id = manifest.checkpoint_id
        self.entries = {entry.path: entry for entry in manifest.files}
        self._files: dict[str, VerifiedFile] = {}

    def ranges(self, rel_path: str) -> ReadRange:
        if rel_path not in self._files:
            entry = self.entries.get(rel_path)
            if entry is None or not entry.chunked:
                raise ValueError(f"{self.checkpoint_id}: {rel_path} has no chunk hashes in its manifest")
            self._files[rel_path] = VerifiedFile(self.inner.ranges(rel_path), entry, self.checkpoint_id)
        return self._files[rel_path]

    @property
    def bytes_hashed(self) -> int:
        return sum(f.bytes_hashed for f in self._files.values())

    def close(self) -> None:
        self.inner.close()  # the files' counts stay: read after closing, for the load's log line
