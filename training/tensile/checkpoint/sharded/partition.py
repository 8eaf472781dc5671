"""This rank's share of a live DeepSpeed ZeRO 1–3 engine, slice by slice, as views of its tensors.

`ZeroPartition` reads the layout off DeepSpeed 0.19.8's optimizers and plans it with layout.py;
the attributes it relies on are named in `_require`, so a DeepSpeed that moved them fails loudly,
not silently. This is the one module that reads DeepSpeed's ZeRO internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tensile.checkpoint.sharded.layout import PARAM, Slice, stage3_slices, stage12_slices


@dataclass(frozen=True, slots=True)
class LocalSlice:
    """One slice as live tensors: `tensors[kind]` is a 1-D view of `length` elements."""

    name: str
    start: int
    length: int
    group: int
    """The optimizer param group it belongs to (-1 for frozen parameters)."""
    tensors: dict[str, torch.Tensor]


def _require(obj: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise RuntimeError(f"{type(obj).__name__} lacks {', '.join(missing)}: Tensile's ZeRO layout "
                           f"reader was written against DeepSpeed 0.19.8's internals")


class ZeroPartition:
    """This rank's share of a DeepSpeed ZeRO 1–3 engine's state, slice by slice."""

    def __init__(self, engine: Any, stage: int):
        import deepspeed.comm as dist

        self.engine = engine
        self.stage = stage
        self.optimizer = engine.optimizer
        self.names = {id(p): name for name, p in engine.module.named_parameters()}
        self._dist = dist
        if stage in (1, 2):
            _require(self.optimizer, "round_robin_bit16_groups", "round_robin_bit16_offsets", "partition_size",
                     "single_partition_of_fp32_groups", "real_dp_process_group", "update_lp_params")
        elif stage == 3:
            _require(self.optimizer, "fp16_groups", "fp32_partitioned_groups_flat", "fp16_partitioned_groups_flat",
                     "sub_group_to_group_id", "_get_sub_group_partition_rank",
                     "_get_sub_group_partition_count", "_reassign_or_swap_out_partitioned_parameters",
                     "persistent_parameters")
        else:
            raise ValueError(f"ZeRO stage {stage} has no partitioned state")
        if any(getattr(self.optimizer, flag, False) for flag in ("cpu_offload", "offload_optimizer", "swap_optimizer")):
            # Offloaded partitions live in pinned host or NVMe buffers this reader does not walk.
            raise RuntimeError("ZeRO-Offload is not supported by Tensile's sharded checkpoints")

    # ---- the flat partitions the inner optimizer steps on -----------------------------
    def flat_partitions(self) -> list[tuple[torch.Tensor, int]]:
        """(fp32 master partition, optimizer param group) for each flat partition."""
        if self.stage == 3:
            return [(flat, self.optimizer.sub_group_to_group_id[i])
                    for i, flat in enumerate(self.optimizer.fp32_partitioned_groups_flat)]
        return [(flat, i) for i, flat in enumerate(self.optimizer.single_partition_of_fp32_groups)]

    def optimizer_state(self, flat: torch.Tensor) -> dict[str, Any]:
        return self.optimizer.optimizer.state[flat]

    def trained_slices(self, state_kinds: Sequence[str]) -> list[LocalSlice]:
        """This rank's slices of every trained parameter, with views of the master weights and
        of each of `state_kinds` (e.g. exp_avg) in the inner optimizer's state."""
        out = []
        for flat_index, (flat, group) in enumerate(self.flat_partitions()):
            params = self._flat_params(flat_index)
            state = self.optimizer_state(flat)
            plan = self._plan(flat_index, params)
            for s in plan:
                views = {PARAM: flat.narrow(0, s.offset, s.length)}
                for kind in state_kinds:
                    views[kind] = state[kind].view(-1).narrow(0, s.offset, s.length)
                out.append(LocalSlice(self.names[id(params[s.param])], s.start, s.length, group, views))
        return out

    def _flat_params(self, flat_index: int) -> list[torch.nn.Parameter]:
        if self.stage == 3:
            return list(self.optimizer.fp16_groups[flat_index])
        return list(self.optimizer.round_robin_bit16_groups[flat_index])

    def _plan(self, flat_index: int, params: list[torch.nn.Parameter]) -> list[Slice]:
        opt = self.optimizer
        if self.stage == 3:
            world = opt._get_sub_group_partition_count(flat_index)
            rank = opt._get_sub_group_partition_rank(flat_index)
            plan = stage3_slices([p.ds_numel for p in params], world, rank, flat_index)
            base = opt.fp16_partitioned_groups_flat[flat_index]
            for s in plan:  # the plan must agree with where DeepSpeed put each chunk
                tensor = params[s.param].ds_tensor
                expected = base.data_ptr() + s.offset * base.element_size()
                if tensor.data_ptr() != expected or tensor.numel() != -(-params[s.param].ds_numel // world):
                    raise RuntimeError(f"ZeRO-3 chunk of {self.names[id(params[s.param])]} is not where "
                                       f"Tensile's layout expects it (DeepSpeed internals changed?)")
            return plan
        rank = self._dist.get_rank(group=opt.real_dp_process_group[flat_index])
        return stage12_slices([p.numel() for p in params], opt.round_robin_bit16_offsets[flat_index],
                              int(opt.partition_size[flat_index]), rank, flat_index)

    # ---- frozen parameters: not in the optimizer -------------------------------------
    def frozen_slices(self, *, writer: bool) -> list[LocalSlice]:
        """Frozen parameters' values: under ZeRO-3 this rank's chunk of each; under ZeRO-1/2
        whole parameters, only when `writer` (every rank holds them; rank 0 saves them, every
        rank loads them)."""
        out = []
        for name, p in self.engine.module.named_parameters():
            if p.requires_grad:
                continue
            if self.stage == 3:
                rank = self._dist.get_rank(group=self.optimizer.dp_process_group)
                chunk = p.ds_tensor.numel()
                length = max(0, min(chunk, p.ds_numel - rank * chunk))
                if length:
                    out.append(LocalSlice(name, rank * chunk, length, -1,
                                          {PARAM: p.ds_tensor.view(-1).narrow(0, 0, length)}))
            elif writer:
                out.append(LocalSlice(name, 0, p.numel(), -1, {PARAM: p.data.view(-1)}))
        return out

    # ---- after loading: model weights follow the master weights -----------------------
    def publish_master_to_model(self) -> None:
        """What DeepSpeed does after each optimizer step: cast the master partitions into the
        model's weights and gather them (a collective)."""
        opt = self.optimizer
        if self.stage == 3:
            for i in range(len(opt.fp16_groups)):
                opt._reassign_or_swap_out_partitioned_parameters(i)
            if opt.persistent_parameters:
                opt.persistent_parameters[0].all_gather(opt.persistent_parameters)
        else:
            opt.update_lp_params()


def engine_precision(engine: Any) -> str:
    """The precision a DeepSpeed engine trains in: fp32, bf16 or fp16."""
    if engine.bfloat16_enabled():
        return "bf16"
    return "fp16" if engine.fp16_enabled() else "fp32"


def full_shape(p: torch.nn.Parameter) -> torch.Size:
    """A parameter's shape before ZeRO-3 partitioned it (DeepSpeed keeps it as `ds_shape`)."""
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape
