"""Saving in the sharded layout: this rank's slices at a step boundary, written as one
safetensors file (and, on rank 0, `meta.pt`).

The slices are views of the live tensors for a synchronous save of host-resident state, or a
private host copy of them: for a background save (training goes on while it is written), and for
any save of state on a GPU (the shard writer reads host memory).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tensile.checkpoint.sharded.layout import META, PARAM, SHARDS, shard_path, slice_key
from tensile.checkpoint.sharded.partition import ZeroPartition, engine_precision, full_shape
from tensile.checkpoint.sharded.shard_file import write_shard_file


def state_kinds(partition: ZeroPartition) -> list[str]:
    """The optimizer state entries that are partitioned like the master weights (exp_avg...)."""
    flats = partition.flat_partitions()
    if not flats:
        return []
    flat, _ = flats[0]
    state = partition.optimizer_state(flat)
    return [k for k, v in state.items() if torch.is_tensor(v) and v.numel() == flat.numel() and v.dim() > 0]


@dataclass(slots=True)
class ShardSnapshot:
    """One rank's part of a checkpoint, ready to write: its slices (views of the live state, or
    a private copy of them) and, on rank 0, the serialized meta file."""

    rank: int
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    meta: bytes | None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values()) + len(self.meta or b"")

    def write(self, directory: Path) -> list[Path]:
        """Write the shard (and meta) under `directory`, each file fsynced."""
        (directory / SHARDS).mkdir(parents=True, exist_ok=True)
        shard = directory / shard_path(self.rank)
        write_shard_file(shard, self.tensors, self.metadata)
        written = [shard]
        if self.meta is not None:
            meta = directory / META
            with open(meta, "wb") as f:
                f.write(self.meta)
                f.flush()
                os.fsync(f.fileno())
            written.append(meta)
        return written


def snapshot_sharded(engine: Any, *, zero_stage: int, rank: int, world_size: int, client_state: dict[str, Any],
                     copy: bool, host_buffers: dict[torch.dtype, torch.Tensor] | None = None,
                     pin_memory: bool = False) -> ShardSnapshot:
    """This rank's slices at this step boundary. With `copy`, into one private buffer per dtype
    (host memory, pinned with `pin_memory`; `host_buffers` are reused when given and large
    enough, and updated), so training can go on while the snapshot is written; without, as
    views of the live tensors, valid until the next optimizer step — or, for state on a device,
    copied to host memory all the same."""
    partition = ZeroPartition(engine, zero_stage)
    kinds = state_kinds(partition)
    tensors: dict[str, torch.Tensor] = {}
    for s in partition.trained_slices(kinds):
        for kind, view in s.tensors.items():
            tensors[slice_key(kind, s.name, s.start)] = view.detach()
    for s in partition.frozen_slices(writer=rank == 0):
        tensors[slice_key(PARAM, s.name, s.start)] = s.tensors[PARAM].detach()
    if copy or any(t.device.type != "cpu" for t in tensors.values()):
        tensors = _copied(tensors, {} if host_buffers is None else host_buffers, pin_memory=pin_memory)
    meta = None
    if rank == 0:
        buffer = io.BytesIO()
        torch.save(_meta(engine, partition, kinds, zero_stage, world_size, client_state), buffer)
        meta = buffer.getvalue()
    return ShardSnapshot(rank, tensors, {"rank": str(rank), "world_size": str(world_size),
                                         "zero_stage": str(zero_stage)}, meta)


def _copied(tensors: dict[str, torch.Tensor], buffers: dict[torch.dtype, torch.Tensor], *,
            pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """The same tensors in one host buffer per dtype. Reusing the buffers from save to save
    matters: first-touch page faults made a fresh 229 MB copy take 2 s here, a warm one a
    fraction. From a GPU into pinned buffers the copies are queued without blocking, and
    waited for once at the end (the writer reads them in another thread)."""
    totals: dict[torch.dtype, int] = {}
    for t in tensors.values():
        totals[t.dtype] = totals.get(t.dtype, 0) + t.numel()
    for dtype, total in totals.items():
        if dtype not in buffers or buffers[dtype].numel() < total or buffers[dtype].is_pinned() != pin_memory:
            buffers[dtype] = torch.empty(total, dtype=dtype, pin_memory=pin_memory)
    cursors = dict.fromkeys(totals, 0)
    out = {}
    from_cuda = False
    for name, t in tensors.items():
        view = buffers[t.dtype].narrow(0, cursors[t.dtype], t.numel())
        from_cuda = from_cuda or t.device.type == "cuda"
        view.copy_(t.reshape(-1), non_blocking=pin_memory and t.device.type == "cuda")
        cursors[t.dtype] += t.numel()
        out[name] = view
    if from_cuda:
        torch.cuda.synchronize()
    return out


def save_sharded(engine: Any, *, zero_stage: int, directory: Path, rank: int, world_size: int,
                 client_state: dict[str, Any]) -> list[Path]:
    """Write this rank's shard (and, on rank 0, the meta file) under `directory`, straight from
    the live tensors (through a host copy for state on a device)."""
    return snapshot_sharded(engine, zero_stage=zero_stage, rank=rank, world_size=world_size,
                            client_state=client_state, copy=False).write(directory)


def _meta(engine: Any, partition: ZeroPartition, kinds: list[str], zero_stage: int, world_size: int,
          client_state: dict[str, Any]) -> dict[str, Any]:
    inner = partition.optimizer.optimizer
    group_state: dict[int, dict[str, Any]] = {}
    state_keys: list[str] = []
    for flat, group in partition.flat_partitions():
        state = partition.optimizer_state(flat)
        state_keys = state_keys or list(state)
        group_state.setdefault(group, {k: (v.clone() if torch.is_tensor(v) else v)
                                       for k, v in state.items() if k not in kinds})
    opt = partition.optimizer
    return {
        "zero_stage": zero_stage, "world_size": world_size, "precision": engine_precision(engine),
        "parameters": {name: (tuple(full_shape(p)), str(p.dtype), p.requires_grad)
                       for name, p in engine.module.named_parameters()},
        "aliases": _aliases(engine.module),
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups],
        "state_keys": state_keys, "state_kinds": kinds, "group_state": group_state,
        "engine": {"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                   "skipped_steps": engine.skipped_steps},
        "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
        "loss_scaling": loss_scaling_state(opt),
        "buffers": {name: b.detach().clone() for name, b in engine.module.named_buffers()},
        "client_state": client_state,
    }


def loss_scaling_state(optimizer: Any) -> dict[str, Any]:
    """The ZeRO optimizer's loss scaler as it stands: under fp16 DeepSpeed's DynamicLossScaler
    (current scale, iterations since the last overflow, hysteresis left), a scale of 1 otherwise."""
    return {k: getattr(optimizer, k) for k in ("loss_scaler", "dynamic_loss_scale", "overflow") if hasattr(optimizer, k)}


def _aliases(module: torch.nn.Module) -> dict[str, str]:
    """Second names of shared (tied) parameters -> the name they are saved under."""
    first: dict[int, str] = {}
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out
