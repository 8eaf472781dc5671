"""Pre-tokenised inputs `tensile data prepare` reads, each as a stream of documents: numpy arrays
(.npy, or raw memmaps of a given dtype), parquet and arrow files with a token-list column (a
Hugging Face `datasets` directory saved with save_to_disk is such arrow files), Megatron .bin/.idx.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("npy", "raw", "parquet", "arrow", "hf", "megatron")
STREAM_CHUNK_TOKENS = 1 << 20
"""A 1-D token array is read in pieces of this many tokens, so memory stays flat."""
# Megatron-LM's MMIDIDX index (megatron/core/datasets/indexed_dataset.py, _IndexWriter/_IndexReader):
# header, version <Q (1), dtype code <B, sequence count <Q, document count <Q, then int32 lengths,
# int64 byte pointers (one per sequence) and int64 document boundaries (sequence indices, from 0).
_MEGATRON_HEADER = b"MMIDIDX\x00\x00"
_MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
                    7: np.float32, 8: np.uint16}


class SourceError(ValueError):
    """The input cannot be read as the format given or guessed; the message says what to pass."""


@dataclass(frozen=True, slots=True)
class Document:
    tokens: np.ndarray
    """int64 token ids."""
    loss_mask: np.ndarray | None = None
    """bool, one flag per token: False where the token must not be a target. None: all count."""
    continues: bool = False
    """A piece of one long token stream: the next piece follows with no separator between them."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    path: Path
    format: str
    dtype: str | None = None
    """raw only: the element type of the memmap (uint16, int32, ...)."""
    token_column: str = "input_ids"
    mask_column: str | None = None
    """parquet / arrow / hf: a column of per-token flags (nonzero: the token counts as a target),
    or, with ignore_index, of labels (the token counts unless its label is ignore_index)."""
    ignore_index: int | None = None
    split: str = "train"
    """hf: the split of a saved DatasetDict."""


def guess_format(path: Path) -> str:
    """The format a path's name or contents say; SourceError if they say none."""
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        suffixes = {p.suffix for p in path.iterdir() if p.is_file()}
        for suffix, name in ((".parquet", "parquet"), (".arrow", "arrow")):
            if suffix in suffixes:
                return name
        raise SourceError(f"{path} is a directory with no parquet, arrow or Hugging Face dataset files; "
                          f"pass --format (one of {', '.join(FORMATS)})")
    if path.suffix == ".npy":
        return "npy"
    if path.suffix in (".parquet", ".arrow"):
        return path.suffix[1:]
    if path.suffix in (".bin", ".idx") and path.with_suffix(".idx").exists():
        return "megatron"
    raise SourceError(f"cannot tell the format of {path}; pass --format (one of {', '.join(FORMATS)}; "
                      "raw needs --dtype too)")


def _integer_tokens(values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind not in "iu":
        raise SourceError(f"{where} holds {values.dtype} values; token ids must be integers")
    return values.astype(np.int64, copy=False)


def _stream(array: np.ndarray, where: str) -> Iterator[Document]:
    """A 1-D array is one token stream; a 2-D array one document per row."""
    if array.ndim == 1:
        for start in range(0, len(array), STREAM_CHUNK_TOKENS):
            yield Document(_integer_tokens(np.asarray(array[start:start + STREAM_CHUNK_TOKENS]), where),
                           continues=True)
    elif array.ndim == 2:
        for row in array:
            yield Document(_integer_tokens(np.asarray(row), where))
    else:
        raise SourceError(f"{where} has shape {array.shape}; expected a 1-D token stream or 2-D rows of documents")


def _npy(spec: SourceSpec) -> tuple[Iterator[Document], int]:
    array = np.load(spec.path, mmap_mode="r")
    return _stream(array, str(spec.path)), int(array.size)


def _raw(spec: SourceSpec) -> tuple[Iterator[Document], int]:
    if spec.dtype is None:
        raise SourceError(f"{spec.path}: a raw memmap does not say its element type; pass --dtype (e.g. uint16)")
    array = np.memmap(spec.path, dtype=np.dtype(spec.dtype), mode="r")
    return _stream(array, str(spec.path)), int(array.size)


def _megatron(spec: SourceSpec) -> tuple[Iterator[Document], int]:
    prefix = spec.path.with_suffix("")
    index_bytes = Path(f"{prefix}.idx").read_bytes()
    if index_bytes[:9] != _MEGATRON_HEADER:
        raise SourceError(f"{prefix}.idx is not a Megatron MMIDIDX index (its header is {index_bytes[:9]!r})")
    version, code = struct.unpack_from("<QB", index_bytes, 9)
    sequence_count, document_count = struct.unpack_from("<QQ", index_bytes, 18)
    if version != 1 or code not in _MEGATRON_DTYPES:
        raise SourceError(f"{prefix}.idx has version {version} and dtype code {code}; this reads version 1")
    offset = 34
    lengths = np.frombuffer(index_bytes, dtype="<i4", count=sequence_count, offset=offset)
    offset += 4 * sequence_count
    pointers = np.frombuffer(index_bytes, dtype="<i8", count=sequence_count, offset=offset)
    offset += 8 * sequence_count
    boundaries = np.frombuffer(index_bytes, dtype="<i8", count=document_count, offset=offset)
    dtype = np.dtype(_MEGATRON_DTYPES[code])
    data = np.memmap(f"{prefix}.bin", dtype=np.uint8, mode="r")

    def documents() -> Iterator[Document]:
        # A document is the sequences between consecutive boundaries (usually one).
        for first, last in zip(boundaries[:-1], boundaries[1:]):
            parts = [data[pointers[s]:pointers[s] + lengths[s] * dtype.itemsize].view(dtype) for s in range(first, last)]
            yield Document(_integer_tokens(np.concatenate(parts) if parts else np.empty(0, dtype), f"{prefix}.bin"))
    return documents(), int(lengths.sum())


def _arrow_files(spec: SourceSpec) -> list[Path]:
    path = spec.path
    if spec.format == "hf":
        if (path / "dataset_dict.json").exists():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            if spec.split not in splits:
                raise SourceError(f"{path} holds the splits {splits}; pass --split with one of them")
            path = path / spec.split
        state = json.loads((path / "state.json").read_text())
        return [path / entry["filename"] for entry in state["_data_files"]]
    suffix = f".{spec.format}"
    files = sorted(p for p in path.iterdir() if p.suffix == suffix) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path} holds no {suffix} files")
    return files


def _record_batches(path: Path, file_format: str, columns: list[str]):
    import pyarrow as pa

    if file_format == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(columns=columns, batch_size=4096)
        return
    try:  # the arrow IPC file format, else the stream format (what `datasets` writes)
        reader = pa.ipc.open_file(path)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        batches = iter(pa.ipc.open_stream(path))
    for batch in batches:
        yield batch.select(columns)


def _columns(spec: SourceSpec) -> tuple[Iterator[Document], int]:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise SourceError("parquet and arrow inputs need pyarrow: pip install 'tensile-training[data]'") from e
    import pyarrow.compute as pc

    files = _arrow_files(spec)
    file_format = "parquet" if spec.format == "parquet" else "arrow"
    columns = [spec.token_column] + ([spec.mask_column] if spec.mask_column else [])

    def batches():
        for path in files:
            for batch in _record_batches(path, file_format, columns):
                names = batch.schema.names
                for column in columns:
                    if column not in names:
                        raise SourceError(f"{path} has no column {column!r} (its columns: {names}); "
                                          "pass --token-column / --mask-column")
                yield path, batch

    total = sum(int(pc.sum(pc.list_value_length(batch.column(0))).as_py() or 0) for _, batch in batches())

    def documents() -> Iterator[Document]:
        for path, batch in batches():
            tokens = batch.column(0)
            offsets = tokens.offsets.to_numpy()
            # flatten() holds the batch's slice of the values: offsets[0] is its first element.
            flat = _integer_tokens(tokens.flatten().to_numpy(zero_copy_only=False), f"{path}:{spec.token_column}")
            flags = None
            if spec.mask_column:
                masks = batch.column(1)
                if not pc.all(pc.equal(pc.list_value_length(masks), pc.list_value_length(tokens))).as_py():
                    raise SourceError(f"{path}: {spec.mask_column!r} must hold one flag per token of {spec.token_column!r}")
                values = masks.flatten().to_numpy(zero_copy_only=False)
                flags = values != spec.ignore_index if spec.ignore_index is not None else values.astype(bool)
            for start, end in zip(offsets[:-1], offsets[1:]):
                yield Document(flat[start - offsets[0]:end - offsets[0]],
                               None if flags is None else flags[start - offsets[0]:end - offsets[0]])
    return documents(), total


def open_source(spec: SourceSpec) -> tuple[Iterator[Document], int]:
    """The documents of the input, and how many tokens they hold (for progress and the split)."""
    if not spec.path.exists():
        raise SourceError(f"{spec.path} does not exist")
    readers = {"npy": _npy, "raw": _raw, "megatron": _megatron, "parquet": _columns, "arrow": _columns,
               "hf": _columns}
    if spec.format not in readers:
        raise SourceError(f"format must be one of {', '.join(FORMATS)}, got {spec.format!r}")
    return readers[spec.format](spec)
