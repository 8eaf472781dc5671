"""One rank's slice of a checkpoint as a safetensors file, written without copies and read by range.

The format is plain safetensors (8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the bytes), so any safetensors reader opens it; the
reader here needs only the header and the byte ranges it asks for, which is what makes a rank
at a new worker count read just its own slices (a `pread` here, a ranged GET on S3).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tensile.checkpoint.api import CheckpointCorrupt, ReadRange

_DTYPES: dict[torch.dtype, str] = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                                   torch.float64: "F64"}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}
_ALIGN = 8
_MAX_HEADER = 256 << 20

def write_shard_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
    """Write `tensors` (CPU, contiguous) to `path`, fsynced; returns the size in bytes.

    Each tensor's bytes go to the file straight from its storage: no serialized copy in memory.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors name here")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGN)  # keeps the data 8-byte aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                f.write(_byte_view(tensor))
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(encoded) + offset


def _byte_view(tensor: torch.Tensor) -> memoryview:
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("shard tensors must be contiguous CPU tensors")
    # bf16 has no numpy dtype: view the same bytes as int16.
    same_bytes = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    return memoryview(same_bytes.detach().numpy()).cast("B")


@dataclass(frozen=True, slots=True)
class StoredTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    """Absolute byte offset of the first element in the file."""
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True, slots=True)
class ShardHeader:
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]
    data_start: int


def read_shard_header(read_range: ReadRange, *, what: str) -> ShardHeader:
    """Parse the header with two small reads; `what` names the file in errors."""
    try:
        (length,) = struct.unpack("<Q", read_range(0, 8))
    except struct.error as e:
        raise CheckpointCorrupt(f"{what}: truncated shard header") from e
    if not 0 < length <= _MAX_HEADER:
        raise CheckpointCorrupt(f"{what}: shard header length {length} is not plausible")
    try:
        raw = json.loads(bytes(read_range(8, length)))
    except ValueError as e:
        raise CheckpointCorrupt(f"{what}: unreadable shard header: {e}") from e
    data_start = 8 + length
    metadata = raw.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in raw.items():
        dtype = _TORCH_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointCorrupt(f"{what}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        tensors[name] = StoredTensor(name, dtype, tuple(info["shape"]), data_start + begin, data_start + end)
    return ShardHeader(tensors=tensors, metadata=metadata, data_start=data_start)
