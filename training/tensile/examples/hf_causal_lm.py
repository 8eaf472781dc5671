"""A Hugging Face `transformers` causal LM as a Tensile factory model, built from a config in code.

`model.factory: tensile.examples.hf_causal_lm:build` with `model.factory_args` naming the
architecture and its config fields; nothing is downloaded (pip install 'tensile-training[hf]').
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tensile.config import ModelConfig

POSITION_FIELDS = ("max_position_embeddings", "n_positions")
"""What architectures call the longest input; filled from model.seq_len unless given."""


def build(model_config: ModelConfig, *, architecture: str = "llama", **config_fields: Any) -> nn.Module:
    """A randomly initialised `architecture` (a transformers model type: llama, gpt2, qwen2, ...)
    with these config fields; vocab_size and the position limit come from the model section.

    The forward takes token ids alone and returns an output with `.logits`. Its dropout draws from
    the global RNG, so set every dropout field to 0 for runs exact under rescaling."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise ValueError("model.factory tensile.examples.hf_causal_lm:build needs transformers: "
                         "pip install 'tensile-training[hf]'") from e
    # Tensile computes the loss from the logits over the whole sequence; no KV cache is wanted.
    hf_config = AutoConfig.for_model(architecture, vocab_size=model_config.vocab_size, use_cache=False,
                                     **config_fields)
    for name in POSITION_FIELDS:
        if hasattr(hf_config, name) and name not in config_fields:
            setattr(hf_config, name, model_config.seq_len)
    model = AutoModelForCausalLM.from_config(hf_config)
    if any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
        _initialise_partitioned(model)
    return model


@torch.no_grad()
def _initialise_partitioned(model: nn.Module) -> None:
    """Run the model's own initialisation again on parameters partitioned by deepspeed.zero.Init
    (ZeRO-3): transformers ran it on the empty partitions, leaving torch's default init. Inside
    zero.Init, Module.apply gathers one module's parameters at a time, and rank 0's values are
    every rank's. The draws are those of plain construction, so the weights are too (tested)."""
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.__dict__.pop("_is_hf_initialized", None)
    model.apply(model._init_weights)
