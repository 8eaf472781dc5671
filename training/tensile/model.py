"""The default workload's model: a small GPT-style causal LM with sample-keyed dropout.

Dropout masks depend on (seed, step, sample, site) only, so any batch split gives the same gradients.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from tensile.config import ModelConfig  # noqa: F401  (re-exported: the model's config)

_UINT64_MASK = (1 << 64) - 1
_INIT_STD = 0.02


def splitmix64(value: int) -> int:
    """One round of splitmix64: a cheap, well-mixed bijection on 64-bit integers."""
    value = (value + 0x9E3779B97F4A7C15) & _UINT64_MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _UINT64_MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _UINT64_MASK
    return value ^ (value >> 31)


def mix_keys(*keys: int) -> int:
    """A 63-bit generator seed from several integer keys; order matters, negative keys are fine."""
    mixed = 0
    for key in keys:
        mixed = splitmix64(mixed ^ (key & _UINT64_MASK))
    return mixed >> 1


class SampleKeyedDropout(nn.Module):
    """Dropout whose mask for each sample is drawn from (seed, step, sample key, site) alone."""

    def __init__(self, p: float, *, site: int, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = p
        self.site = site
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site}"

    def forward(self, inputs: torch.Tensor, sample_keys: Sequence[int] | None, step: int) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return inputs
        if sample_keys is None:
            raise ValueError("sample_keys are required for dropout in training mode")
        if len(sample_keys) != inputs.shape[0]:
            raise ValueError(f"got {len(sample_keys)} sample keys for a batch of {inputs.shape[0]}")
        # A private generator leaves the global RNG alone; float32 draws keep masks dtype-independent.
        generator = torch.Generator(device=inputs.device)
        masks = []
        for sample_key in sample_keys:
            generator.manual_seed(mix_keys(self.seed, step, sample_key, self.site))
            masks.append(torch.rand(inputs.shape[1:], generator=generator, device=inputs.device) >= self.p)
        keep = torch.stack(masks).to(inputs.dtype)
        return inputs * keep / (1.0 - self.p)


class QKVProjection(nn.Linear):
    """The fused query/key/value projection, whose key bias takes no part.

    A key bias adds q·b_k to every score of a query alike, and softmax ignores a shift: its true
    gradient is zero and its computed one rounding noise (~1e-12 of the others), which Adam
    divides by its own root mean square into steps of about the learning rate, in a direction set
    by how the batch was split. Runs at different worker counts drifted apart there by ~1e-3 in
    200 steps and fed it back into every weight through the rounding. Masked out of the forward,
    b_k gets an exact zero gradient and stays where it is (weight decay aside: none, biases are
    exempt). The parameter keeps its shape, so every checkpoint loads; a b_k trained before
    this changes no output (the same shift argument), only the rounding.
    """

    def __init__(self, width: int) -> None:
        super().__init__(width, 3 * width)
        key = torch.zeros(3 * width, dtype=torch.bool)
        key[width:2 * width] = True
        # A bool buffer: no precision cast (bf16, fp16) touches it, and masked_fill keeps the
        # bias's dtype.
        self.register_buffer("key_slots", key, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # In the submodule's own forward, where ZeRO-3 has gathered weight and bias.
        return F.linear(hidden, self.weight, self.bias.masked_fill(self.key_slots, 0.0))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv_projection = QKVProjection(config.d_model)
        self.output_projection = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        query, key, value = self.qkv_projection(hidden).split(width, dim=-1)
        shape = (batch, length, self.n_heads, width // self.n_heads)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
        # Attention-probability dropout would need per-sample keyed masks inside the fused kernel.
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True, dropout_p=0.0)
        return self.output_projection(attended.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_projection = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.output_projection = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_projection(F.gelu(self.input_projection(hidden)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block; dropout sites 2 * layer + 1 (attention) and 2 * layer + 2 (MLP)."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config)
        self.attention_dropout = SampleKeyedDropout(
            config.dropout, site=2 * layer + 1, seed=config.dropout_seed
        )
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)
        self.mlp_dropout = SampleKeyedDropout(config.dropout, site=2 * layer + 2, seed=config.dropout_seed)

    def forward(self, hidden: torch.Tensor, sample_keys: Sequence[int] | None, step: int) -> torch.Tensor:
        attended = self.attention(self.attention_norm(hidden))
        hidden = hidden + self.attention_dropout(attended, sample_keys, step)
        return hidden + self.mlp_dropout(self.mlp(self.mlp_norm(hidden)), sample_keys, step)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.embedding_dropout = SampleKeyedDropout(config.dropout, site=0, seed=config.dropout_seed)
        self.blocks = nn.ModuleList(TransformerBlock(config, layer) for layer in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.output_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Shared as a module parameter (not read off the embedding in forward), so engines
            # that gather parameters per module, such as ZeRO-3, see the head use it.
            self.output_head.weight = self.token_embedding.weight
        self.checkpoint_blocks = config.activation_checkpointing
        """Recompute each block in the backward pass (torch.utils.checkpoint, non-reentrant)."""
        with gathered_for_init(list(self.parameters())):
            self._init_weights()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """The activation-checkpointing hook, named and called as on Hugging Face models."""
        if (activation_checkpointing_kwargs or {}).get("use_reentrant", False):
            raise ValueError("CausalLM checkpoints its blocks non-reentrant only (the keyed dropout's "
                             "step and sample keys are not tensors)")
        self.checkpoint_blocks = True

    def _init_weights(self) -> None:
        # GPT-2 init; residual projections shrink with depth so the residual stream's variance
        # does not grow with the number of blocks.
        residual_std = _INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if module.weight is not self.token_embedding.weight:
                    std = residual_std if name.endswith("output_projection") else _INIT_STD
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self, tokens: torch.Tensor, sample_keys: torch.Tensor | None = None, step: int = 0
    ) -> torch.Tensor:
        """Logits [B, T, vocab_size] for tokens [B, T]; sample_keys [B] key the dropout masks."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.config.seq_len:
            raise ValueError(f"input length {length} exceeds ModelConfig.seq_len={self.config.seq_len}")
        keys: list[int] | None = None
        if sample_keys is not None:
            if sample_keys.shape != (tokens.shape[0],):
                raise ValueError(
                    f"sample_keys must have shape ({tokens.shape[0]},) to match tokens, "
                    f"got {tuple(sample_keys.shape)}"
                )
            keys = sample_keys.tolist()
        positions = torch.arange(length, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)
        hidden = self.embedding_dropout(hidden, keys, step)
        for block in self.blocks:
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                # Recomputation is exact: the dropout masks are keyed, not drawn from a global RNG.
                hidden = torch.utils.checkpoint.checkpoint(block, hidden, keys, step, use_reentrant=False)
            else:
                hidden = block(hidden, keys, step)
        return self.output_head(self.final_norm(hidden))


def build_model(config: ModelConfig) -> nn.Module:
    """The configured model: `config.factory(config, **config.factory_args)` if set (a pluggable
    model), else CausalLM; then the frozen prefixes and the activation-checkpointing switch."""
    if not config.factory:
        model = CausalLM(config)
    else:
        module_name, _, attribute = config.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model.factory {config.factory!r} cannot be imported: {e}; install the "
                             f"package that provides it in the training image") from e
        try:
            inspect.signature(factory).bind(config, **config.factory_args)
        except TypeError as e:
            raise ValueError(f"model.factory {config.factory!r} cannot be called with the model config and "
                             f"model.factory_args {sorted(config.factory_args)}: {e}") from e
        model = factory(config, **config.factory_args)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model.factory {config.factory!r} returned {type(model).__name__}, not a torch "
                             f"nn.Module")
    freeze(model, config.frozen)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model, config.factory or "CausalLM")
    return model


CHECKPOINTING_HOOKS = ("activation_checkpointing_enable", "gradient_checkpointing_enable")
"""The methods that switch a model's activation checkpointing on, in the order tried: Hugging Face's
names from transformers 5 and before it, each taking `<name minus _enable>_kwargs`."""


def enable_activation_checkpointing(model: nn.Module, name: str) -> None:
    """Call the model's activation-checkpointing hook, non-reentrant: reentrant checkpointing
    drops the gradients of blocks whose inputs do not require them (token ids, frozen layers)."""
    for hook_name in CHECKPOINTING_HOOKS:
        hook = getattr(model, hook_name, None)
        if callable(hook):
            hook(**{hook_name.removesuffix("_enable") + "_kwargs": {"use_reentrant": False}})
            return
    raise ValueError(f"model.activation_checkpointing: the model of {name!r} ({type(model).__name__}) has "
                     f"neither {' nor '.join(f'{h}()' for h in CHECKPOINTING_HOOKS)}; give it one "
                     f"(docs/design/models.md) or set model.activation_checkpointing to false")


def takes_sample_keys(model: nn.Module) -> bool:
    """Whether forward takes (tokens, sample_keys, step): keyed randomness, as the default model's
    dropout. Named parameters only; a `**kwargs` (as Hugging Face models have) is not taken for it."""
    parameters = inspect.signature(model.forward).parameters
    return "sample_keys" in parameters and "step" in parameters


def logits_of(output: Any) -> torch.Tensor:
    """The logits a forward returned: the tensor itself, or an output object's `.logits`."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model's forward returned {type(output).__name__}; it must return logits "
                        f"[batch, length, vocab] or an object with a .logits tensor")
    return logits


def gathered_for_init(parameters: list[nn.Parameter]):
    """A context in which parameters partitioned by deepspeed.zero.Init are whole, and what rank 0
    writes into them is every rank's on exit; a plain no-op for unpartitioned parameters."""
    if not any(hasattr(p, "ds_id") for p in parameters):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)


def parameter_shape(parameter: nn.Parameter) -> torch.Size:
    """The parameter's full shape, also while ZeRO-3 holds only a partition of it."""
    return getattr(parameter, "ds_shape", parameter.shape)


def freeze(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Stop training every parameter whose name starts with one of `prefixes`."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unmatched:
        raise ValueError(f"model.frozen: {', '.join(map(repr, unmatched))} names no parameter; the model's "
                         f"parameters start with {', '.join(sorted({n.split('.')[0] for n in names}))}")
    for name, parameter in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            parameter.requires_grad_(False)


def parameter_groups(model: nn.Module, *, weight_decay: float) -> list[dict]:
    """Optimizer groups: decay for matrix weights; none for biases, norms and embeddings."""
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    exempt = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.LayerNorm))
        for parameter in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    # parameters() yields a tied parameter once, so it lands in exactly one group.
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if len(parameter_shape(parameter)) < 2 or id(parameter) in exempt:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _masked_token_losses(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cross-entropy per target [B, T], zero where loss_mask is off, and the mask as bools."""
    if logits.shape[:-1] != targets.shape or targets.shape != loss_mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus a vocabulary "
            f"dimension, and loss_mask {tuple(loss_mask.shape)} must match targets"
        )
    selected = loss_mask.bool()
    # Masked-out targets may be padding or ignore values; any valid id keeps cross_entropy happy.
    safe_targets = targets.masked_fill(~selected, 0)
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), safe_targets.reshape(-1), reduction="none"
    ).view_as(targets)
    return torch.where(selected, per_token, torch.zeros((), device=per_token.device)), selected


def token_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of float32 cross-entropy over tokens where loss_mask is set, and how many there were.

    Dividing by the step's global token count (not a micro-batch mean) makes gradients independent
    of how the global batch is split across workers and micro-batches.
    """
    losses, selected = _masked_token_losses(logits, targets, loss_mask)
    return losses.sum(), selected.sum()


def token_loss_per_sample(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's sum of float32 cross-entropy over its counted targets, and their count: [B], [B].

    For evaluation, where per-sample sums are added in sample order (tensile.evaluation) so the
    total does not depend on how samples were spread over workers."""
    losses, selected = _masked_token_losses(logits, targets, loss_mask)
    return losses.sum(dim=1), selected.sum(dim=1)
