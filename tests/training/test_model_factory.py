"""Bring your own model: factory arguments, the forward contract, identity, and the memory switches."""

from __future__ import annotations

import socket
import sys
import types
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from tensile.config import ConfigError, ModelConfig, TrainingConfig, config_from_dict
from tensile.model import (CausalLM, build_model, logits_of, parameter_groups, takes_sample_keys,
                           token_loss_sum)

SMALL = {"vocab_size": 64, "seq_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}
TINY_LLAMA = {"architecture": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1}


class TokensOnly(nn.Module):
    """A factory model with the smallest forward: token ids in, an output with `.logits` out."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> types.SimpleNamespace:
        return types.SimpleNamespace(logits=self.head(self.embedding(input_ids)))


@pytest.fixture
def byo_module(monkeypatch):
    """An importable module `byo_models` holding factories, as a team's package would."""
    module = types.ModuleType("byo_models")
    module.calls = []

    def tokens_only(model_config, *, width: int = 8, note: str = ""):
        module.calls.append((model_config, width, note))
        return TokensOnly(model_config.vocab_size, width)

    module.tokens_only = tokens_only
    module.not_a_module = lambda model_config: "a string"
    monkeypatch.setitem(sys.modules, "byo_models", module)
    return module


# --- factory arguments and validation ---------------------------------------------------------


def test_build_model_calls_the_factory_with_the_model_config_and_its_arguments(byo_module):
    config = ModelConfig(vocab_size=50, factory="byo_models:tokens_only", factory_args={"width": 12, "note": "x"})
    model = build_model(config)
    assert byo_module.calls == [(config, 12, "x")]
    assert model.embedding.weight.shape == (50, 12)


def test_factory_arguments_the_factory_does_not_take_are_refused_naming_them(byo_module):
    config = ModelConfig(factory="byo_models:tokens_only", factory_args={"depth": 3})
    with pytest.raises(ValueError, match=r"cannot be called with .*\['depth'\].*depth"):
        build_model(config)
    assert byo_module.calls == []  # refused before anything was built
    with pytest.raises(ValueError, match="returned str, not a torch nn.Module"):
        build_model(ModelConfig(factory="byo_models:not_a_module"))


def test_a_factory_model_needs_none_of_the_default_models_shape_fields():
    # n_heads does not divide d_model, and n_layers is 0: only the default model would care.
    config = config_from_dict({"model": {"factory": "byo_models:tokens_only", "d_model": 30, "n_heads": 4,
                                         "n_layers": 0, "seq_len": 16}})
    assert config.model.seq_len == 16
    with pytest.raises(ConfigError, match="d_model=30 must be divisible"):
        config_from_dict({"model": {"d_model": 30, "n_heads": 4}})


@pytest.mark.parametrize("model, message", [
    ({"factory_args": {"width": 8}}, "model.factory, which is not set"),
    ({"factory": "a.b:c", "factory_args": {"when": __import__("datetime").date(2026, 1, 1)}},
     r"JSON values.*factory_args.when is datetime.date\(2026, 1, 1\)"),
    ({"factory": "a.b:c", "factory_args": {"ratio": float("nan")}}, "factory_args.ratio is nan"),
    ({"factory": "a.b:c", "factory_args": {"layers": [{1: 2}]}}, r"factory_args.layers\[0\] has the key 1"),
    ({"factory": "a.b:c", "factory_args": ["width", 8]}, "must be a mapping of keyword-argument names"),
    ({"factory": "a.b:c", "factory_args": {"not a name": 1}}, "must be a mapping of keyword-argument names"),
    ({"factory": "a.b:c", "factory_args": {"width": 8}, "d_model": 64, "n_layers": 2},
     "d_model, n_layers shape only Tensile's default model.*move them there"),
    ({"activation_checkpointing": "yes"}, "model.activation_checkpointing: must be true or false"),
])
def test_model_section_problems_are_reported_naming_the_field(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})


# --- identity ---------------------------------------------------------------------------------


def test_configs_without_the_new_fields_hash_as_before():
    # Values computed by the code before factory_args and activation_checkpointing existed: the
    # hashes checkpoints recorded, which a resume compares against.
    assert (TrainingConfig().model_hash(), TrainingConfig().trajectory_hash()) == ("30b1a0d30c05db26",
                                                                                   "aa91636539ebd4b8")
    factory = TrainingConfig(model=ModelConfig(factory="pkg.mod:fn", frozen=["a"]))
    assert (factory.model_hash(), factory.trajectory_hash()) == ("de196e77eeb03d65", "1b1c4a675edbdef9")


def test_the_model_hash_covers_the_factory_and_its_arguments_but_not_activation_checkpointing():
    def hashes(**model):
        config = TrainingConfig(model=ModelConfig(**model))
        return config.model_hash(), config.trajectory_hash()

    base = hashes(factory="pkg.mod:fn", factory_args={"width": 8})
    assert base != hashes(factory="pkg.mod:fn", factory_args={"width": 16})
    assert base != hashes(factory="pkg.mod:fn")
    assert base != hashes(factory="pkg.mod:other", factory_args={"width": 8})
    assert base == hashes(factory="pkg.mod:fn", factory_args={"width": 8}, activation_checkpointing=True)
    assert hashes() == hashes(activation_checkpointing=True)


# --- the forward contract ---------------------------------------------------------------------


def test_the_forward_contract_is_read_off_the_signature_and_the_output():
    assert takes_sample_keys(CausalLM(ModelConfig(**SMALL)))
    # **kwargs (as on Hugging Face models) is not taken for sample keys: they would be passed on.
    assert not takes_sample_keys(TokensOnly(8, 4))
    logits = torch.zeros(1, 2, 3)
    assert logits_of(logits) is logits
    assert logits_of(types.SimpleNamespace(logits=logits)) is logits
    with pytest.raises(TypeError, match="returned tuple; it must return logits"):
        logits_of((logits,))


# --- activation checkpointing -----------------------------------------------------------------


def _loss_and_grads(model: nn.Module, tokens: torch.Tensor, keyed: bool):
    inputs = (tokens[:, :-1], torch.arange(tokens.shape[0]), 3) if keyed else (tokens[:, :-1],)
    loss, _ = token_loss_sum(logits_of(model(*inputs)), tokens[:, 1:], torch.ones_like(tokens[:, 1:]))
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_of_the_default_model_recomputes_the_same_gradients(monkeypatch):
    tokens = torch.randint(0, SMALL["vocab_size"], (3, SMALL["seq_len"] + 1), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**SMALL, dropout=0.2))
    torch.manual_seed(0)
    checkpointed = build_model(ModelConfig(**SMALL, dropout=0.2, activation_checkpointing=True))
    recomputed = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: recomputed.append(k["use_reentrant"]) or original(*a, **k))
    plain_loss, plain_grads = _loss_and_grads(plain, tokens, keyed=True)
    loss, grads = _loss_and_grads(checkpointed, tokens, keyed=True)
    assert recomputed == [False] * SMALL["n_layers"]  # per block, non-reentrant
    # Keyed dropout draws the same masks in the recomputation: the same numbers, not merely close.
    assert loss == plain_loss
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=0, atol=1e-7)


def test_activation_checkpointing_of_a_factory_model_uses_its_hook_or_is_refused(byo_module):
    calls = []

    class OlderHooked(TokensOnly):  # transformers 4's name
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(("gradient", gradient_checkpointing_kwargs))

    class Hooked(OlderHooked):  # transformers 5's name wins where a model has both
        def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
            calls.append(("activation", activation_checkpointing_kwargs))

    byo_module.hooked = lambda model_config: Hooked(model_config.vocab_size, 4)
    byo_module.older = lambda model_config: OlderHooked(model_config.vocab_size, 4)
    build_model(ModelConfig(factory="byo_models:hooked", activation_checkpointing=True))
    build_model(ModelConfig(factory="byo_models:older", activation_checkpointing=True))
    assert calls == [("activation", {"use_reentrant": False}), ("gradient", {"use_reentrant": False})]
    with pytest.raises(ValueError, match="has neither activation_checkpointing_enable.*or set model.activation_checkpointing"):
        build_model(ModelConfig(factory="byo_models:tokens_only", activation_checkpointing=True))


def test_the_hugging_face_example_builds_from_config_and_checkpoints_the_same_gradients():
    pytest.importorskip("transformers")
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(2))
    config = {"vocab_size": 64, "seq_len": 16, "factory": "tensile.examples.hf_causal_lm:build",
              "factory_args": TINY_LLAMA}
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**config))
    torch.manual_seed(0)
    checkpointed = build_model(ModelConfig(**config, activation_checkpointing=True))
    assert not takes_sample_keys(plain)
    assert plain.config.max_position_embeddings == 16 and plain.config.vocab_size == 64
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    plain_loss, plain_grads = _loss_and_grads(plain, tokens, keyed=False)
    loss, grads = _loss_and_grads(checkpointed, tokens, keyed=False)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)


# --- ZeRO-3: built under deepspeed.zero.Init ---------------------------------------------------


@contextmanager
def _one_process_group(monkeypatch):
    import deepspeed
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        deepspeed.init_distributed(dist_backend="gloo")
        yield deepspeed
    finally:
        dist.destroy_process_group()  # DeepSpeed's globals are cleared after the test (conftest.py)


def _engine_losses(model_config: ModelConfig, *, zero_stage: int, under_zero_init: bool, steps: int = 3):
    """Losses of a few AdamW steps of an engine over fixed tokens, with its initial weights."""
    import deepspeed

    from tensile.trainer import model_construction

    engine_config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
                     "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1, "torch_adam": True}},
                     "zero_optimization": {"stage": zero_stage}, "steps_per_print": 1 << 30}
    training = TrainingConfig(model=model_config)
    training.zero.stage = zero_stage if under_zero_init else 0  # what model_construction reads
    torch.manual_seed(4)
    with model_construction(training, engine_config):
        model = build_model(model_config)
    groups = parameter_groups(model, weight_decay=0.1)
    group_sizes = [sum(torch.Size(getattr(p, "ds_shape", p.shape)).numel() for p in g["params"]) for g in groups]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=engine_config)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        initial = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    tokens = torch.randint(0, model_config.vocab_size, (2, model_config.seq_len + 1),
                           generator=torch.Generator().manual_seed(9))
    keyed = takes_sample_keys(model)
    losses = []
    for step in range(steps):
        inputs = (tokens[:, :-1], torch.arange(2), step) if keyed else (tokens[:, :-1],)
        loss, _ = token_loss_sum(logits_of(engine(*inputs)), tokens[:, 1:], torch.ones_like(tokens[:, 1:]))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return initial, group_sizes, losses


def test_zero3_builds_under_zero_init_with_the_initial_weights_and_losses_of_plain_construction(monkeypatch):
    model_config = ModelConfig(**SMALL)
    with _one_process_group(monkeypatch):
        plain_initial, plain_groups, plain_losses = _engine_losses(model_config, zero_stage=3, under_zero_init=False)
        initial, group_sizes, losses = _engine_losses(model_config, zero_stage=3, under_zero_init=True)
        _, _, checkpointed_losses = _engine_losses(ModelConfig(**SMALL, activation_checkpointing=True),
                                                   zero_stage=3, under_zero_init=True)
    assert initial.keys() == plain_initial.keys()
    for name in initial:  # the same seed gives the same weights, bit for bit
        assert torch.equal(initial[name], plain_initial[name]), name
    assert group_sizes == plain_groups  # decay and no-decay groups read the full shapes
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-6)


def test_the_hugging_face_example_under_zero_init_keeps_its_own_initialisation(monkeypatch):
    # transformers initialises the empty partitions (a no-op), which would leave torch's default
    # init (std about 0.1 for these widths, N(0, 1) embeddings); the example runs the model's
    # init again per gathered module. Its draws come in another order than plain construction's,
    # so the weights differ but follow the same distribution (docs/design/models.md).
    pytest.importorskip("transformers")
    import deepspeed

    model_config = ModelConfig(vocab_size=64, seq_len=16, factory="tensile.examples.hf_causal_lm:build",
                               factory_args=TINY_LLAMA)
    with _one_process_group(monkeypatch):
        torch.manual_seed(5)
        plain = build_model(model_config)
        torch.manual_seed(5)
        with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 1, "zero_optimization": {"stage": 3}}):
            partitioned = build_model(model_config)
        assert all(hasattr(p, "ds_id") for p in partitioned.parameters())
        with deepspeed.zero.GatheredParameters(list(partitioned.parameters())):
            gathered = {name: p.detach().clone() for name, p in partitioned.named_parameters()}
    for name, parameter in plain.named_parameters():
        if parameter.dim() == 2:
            ratio = gathered[name].std().item() / parameter.std().item()
            assert 0.8 < ratio < 1.25, (name, ratio)  # measured 0.89..1.07
