"""Consolidating a sharded checkpoint into whole tensors, with no engine and no process group
(`tensile checkpoint export`, tests)."""

from __future__ import annotations

import math
from typing import Any

import torch

from tensile.checkpoint.api import RangeReader
from tensile.checkpoint.sharded.layout import PARAM
from tensile.checkpoint.sharded.restore import SliceIndex, read_meta


def consolidated_state(source: RangeReader, saved_world_size: int, meta_size: int, *,
                       what: str) -> dict[str, torch.Tensor]:
    """Every parameter's full tensors, keyed `<kind>/<name>` (param = fp32 master or frozen value)."""
    meta = read_meta(source, meta_size, what=what)
    return _consolidate(source, saved_world_size, meta, what=what, weights_only=False)


def consolidated_weights(source: RangeReader, saved_world_size: int, meta_size: int, *,
                         what: str) -> dict[str, torch.Tensor]:
    """The model's weights by every name the model uses (tied parameters under each name)."""
    meta = read_meta(source, meta_size, what=what)
    state = _consolidate(source, saved_world_size, meta, what=what, weights_only=True)
    weights = {key.removeprefix(f"{PARAM}/"): tensor for key, tensor in state.items()}
    for alias, name in meta.get("aliases", {}).items():
        weights[alias] = weights[name]
    return weights


def _consolidate(source: RangeReader, saved_world_size: int, meta: dict[str, Any], *, what: str,
                 weights_only: bool) -> dict[str, torch.Tensor]:
    index = SliceIndex(source, saved_world_size, what=what)
    trained_kinds = [PARAM] if weights_only else [PARAM, *meta["state_kinds"]]
    out = {}
    for name, (shape, dtype, trainable) in meta["parameters"].items():
        numel = math.prod(shape)
        # Trained parameters are kept as fp32 masters; frozen ones as they are.
        full_dtype = torch.float32 if trainable else getattr(torch, dtype.removeprefix("torch."))
        for kind in (trained_kinds if trainable else [PARAM]):
            tensor = torch.empty(numel, dtype=full_dtype)
            index.fill(kind, name, 0, tensor)
            out[f"{kind}/{name}"] = tensor.view(shape)
    return out
