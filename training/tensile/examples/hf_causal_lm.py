"""A Hugging Face `transformers` causal LM as a Tensile factory model, built from a config in code.

`model.factory: tensile.examples.hf_causal_lm:build` with `model.factory_args` naming the
architecture and its config fields; nothing is downloaded (pip install 'tensile-training[hf]').
"""

from __future__ import annotations

from typing import Any

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
    return AutoModelForCausalLM.from_config(hf_config)
