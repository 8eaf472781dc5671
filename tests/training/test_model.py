import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tensile.model import (
    CausalLM,
    ModelConfig,
    SampleKeyedDropout,
    build_model,
    mix_keys,
    parameter_groups,
    splitmix64,
    token_loss_sum,
)

SMALL = {"vocab_size": 64, "seq_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(**(SMALL | overrides)))


def _tokens(batch, length=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=generator)


# --- ModelConfig -------------------------------------------------------------------------------


def test_model_config_defaults_are_the_default_workload():
    config = ModelConfig()
    assert (config.vocab_size, config.seq_len, config.d_model) == (256, 128, 128)
    assert (config.n_layers, config.n_heads, config.mlp_ratio) == (4, 4, 4)
    assert (config.dropout, config.tie_embeddings) == (0.1, True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30, "n_heads": 4}, r"d_model=30 must be divisible by ModelConfig.n_heads=4"),
        ({"vocab_size": 0}, r"vocab_size must be a positive integer, got 0"),
        ({"n_layers": -1}, r"n_layers must be a positive integer, got -1"),
        ({"mlp_ratio": 2.5}, r"mlp_ratio must be a positive integer, got 2.5"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_model_config_rejects_bad_values_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_model_config_is_keyword_only():
    with pytest.raises(TypeError):
        ModelConfig(256)


# --- SampleKeyedDropout ------------------------------------------------------------------------


def test_sample_keyed_dropout_is_identity_in_eval_or_at_zero():
    inputs = torch.randn(3, 5, 8)
    dropout = SampleKeyedDropout(0.5, site=1).eval()
    assert dropout(inputs, [1, 2, 3], 0) is inputs
    assert SampleKeyedDropout(0.0, site=1)(inputs, None, 0) is inputs


def test_sample_keyed_dropout_mask_follows_the_sample_not_the_batch_position():
    dropout = SampleKeyedDropout(0.3, site=4, seed=9)
    inputs = torch.ones(3, 6, 8)

    forward = dropout(inputs, [10, 11, 12], step=5)
    reversed_batch = dropout(inputs, [12, 11, 10], step=5)
    alone = dropout(inputs[:1], [11], step=5)

    assert torch.equal(forward[0], reversed_batch[2])
    assert torch.equal(forward[1], alone[0])
    assert not torch.equal(forward[0], forward[1])


def test_sample_keyed_dropout_mask_changes_with_step_site_and_seed():
    inputs = torch.ones(1, 64, 8)
    base = SampleKeyedDropout(0.5, site=1, seed=0)(inputs, [7], step=3)

    assert not torch.equal(base, SampleKeyedDropout(0.5, site=1, seed=0)(inputs, [7], step=4))
    assert not torch.equal(base, SampleKeyedDropout(0.5, site=2, seed=0)(inputs, [7], step=3))
    assert not torch.equal(base, SampleKeyedDropout(0.5, site=1, seed=1)(inputs, [7], step=3))


def test_sample_keyed_dropout_drops_at_rate_p_and_rescales():
    output = SampleKeyedDropout(0.25, site=0)(torch.ones(4, 128, 64), [0, 1, 2, 3], step=0)

    dropped = (output == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.01
    assert torch.allclose(output[output != 0], torch.tensor(1 / 0.75))


def test_sample_keyed_dropout_needs_keys_in_training():
    with pytest.raises(ValueError, match="sample_keys are required"):
        SampleKeyedDropout(0.1, site=0)(torch.ones(2, 3), None, 0)
    with pytest.raises(ValueError, match="got 1 sample keys for a batch of 2"):
        SampleKeyedDropout(0.1, site=0)(torch.ones(2, 3), [5], 0)


def test_splitmix64_matches_the_reference_sequence():
    # First output of Vigna's splitmix64 from state 0.
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_mix_keys_is_63_bit_and_order_sensitive():
    assert mix_keys(1, 2, 3) != mix_keys(3, 2, 1)
    keys = [(seed, step, -key) for seed in range(3) for step in range(3) for key in range(3)]
    assert all(0 <= mix_keys(*key) < 2**63 for key in keys)
    # Pinned: changing the mix changes every run's dropout masks.
    assert mix_keys(0, 0, 0, 0) == 1195769770526638388


# --- CausalLM ----------------------------------------------------------------------------------


def test_causal_lm_returns_logits_per_position():
    model = _model()
    logits = model(_tokens(3, length=10), torch.arange(3), step=0)
    assert logits.shape == (3, 10, SMALL["vocab_size"])


def test_causal_lm_does_not_look_ahead():
    model = _model().eval()
    tokens = _tokens(2)
    changed = tokens.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % SMALL["vocab_size"]

    before, after = model(tokens), model(changed)

    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_causal_lm_train_logits_of_a_sample_do_not_depend_on_its_batch():
    model = _model(dropout=0.5).train()
    tokens = _tokens(4)
    keys = torch.tensor([100, 101, 102, 103])

    full = model(tokens, keys, step=7)
    permuted = model(tokens[[2, 0, 3, 1]], keys[[2, 0, 3, 1]], step=7)
    pair = model(tokens[[3, 1]], keys[[3, 1]], step=7)
    single = model(tokens[1:2], keys[1:2], step=7)

    assert torch.equal(full[2], permuted[0]) and torch.equal(full[1], permuted[3])
    assert torch.equal(full[3], pair[0]) and torch.equal(full[1], pair[1])
    assert torch.equal(full[1], single[0])


def test_causal_lm_dropout_masks_change_with_step_and_key():
    model = _model(dropout=0.5).train()
    tokens = _tokens(1)

    base = model(tokens, torch.tensor([5]), step=1)

    assert torch.equal(base, model(tokens, torch.tensor([5]), step=1))
    assert not torch.equal(base, model(tokens, torch.tensor([5]), step=2))
    assert not torch.equal(base, model(tokens, torch.tensor([6]), step=1))


def test_causal_lm_forward_leaves_the_global_rng_alone():
    model = _model(dropout=0.5).train()
    tokens, keys = _tokens(2), torch.tensor([1, 2])
    torch.manual_seed(123)
    state = torch.get_rng_state()

    first = model(tokens, keys, step=0)

    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    assert torch.equal(first, model(tokens, keys, step=0))


def test_causal_lm_rejects_inputs_it_cannot_handle():
    model = _model()
    with pytest.raises(ValueError, match="exceeds ModelConfig.seq_len=16"):
        model(_tokens(1, length=17), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"sample_keys must have shape \(2,\)"):
        model(_tokens(2), torch.tensor([0, 1, 2]))


def test_causal_lm_init_is_deterministic_under_manual_seed():
    first, same, other = _model(seed=3), _model(seed=3), _model(seed=4)

    for (name, tensor), same_tensor, other_tensor in zip(
        first.state_dict().items(), same.state_dict().values(), other.state_dict().values()
    ):
        assert torch.equal(tensor, same_tensor), name
    assert not torch.equal(first.token_embedding.weight, other.token_embedding.weight)


def test_causal_lm_init_scales_residual_projections_with_depth():
    model = _model(d_model=256, n_layers=8, n_heads=4)
    plain = model.blocks[0].attention.qkv_projection.weight.std().item()
    residual_weights = [block.mlp.output_projection.weight.flatten() for block in model.blocks]
    residual = torch.cat(residual_weights).std().item()

    assert abs(plain - 0.02) < 0.001
    assert abs(residual - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.count_nonzero(model.blocks[0].attention.qkv_projection.bias) == 0


def test_causal_lm_ties_the_output_head_to_the_token_embedding():
    tied, untied = _model(), _model(tie_embeddings=False)

    assert tied.output_head.weight is tied.token_embedding.weight
    assert untied.output_head.weight is not untied.token_embedding.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 64 * 32


# --- parameter_groups --------------------------------------------------------------------------


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_parameter_groups_place_every_parameter_exactly_once(tie_embeddings):
    model = _model(tie_embeddings=tie_embeddings)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)

    grouped = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert len(grouped) == len(set(grouped))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_parameter_groups_exempt_biases_norms_and_embeddings():
    model = _model(tie_embeddings=False)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    decay_ids, no_decay_ids = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}

    for name, parameter in model.named_parameters():
        exempt = parameter.dim() < 2 or "embedding" in name or "norm" in name
        assert (id(parameter) in no_decay_ids) == exempt, name
    assert id(model.output_head.weight) in decay_ids


def test_parameter_groups_reject_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -0.5"):
        parameter_groups(nn.Linear(2, 2), weight_decay=-0.5)


# --- token_loss_sum ----------------------------------------------------------------------------


def test_token_loss_sum_matches_masked_cross_entropy():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    loss_mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])

    loss_sum, token_count = token_loss_sum(logits, targets, loss_mask)

    selected = loss_mask.bool()
    expected = F.cross_entropy(logits[selected], targets[selected], reduction="sum")
    assert token_count.item() == 7
    assert torch.allclose(loss_sum, expected)


def test_token_loss_sum_ignores_garbage_targets_under_the_mask():
    logits = torch.randn(1, 3, 4)
    loss_sum, token_count = token_loss_sum(logits, torch.tensor([[1, -100, 99]]), torch.tensor([[1, 0, 0]]))

    assert token_count.item() == 1
    assert torch.allclose(loss_sum, F.cross_entropy(logits[0, :1], torch.tensor([1]), reduction="sum"))


def test_token_loss_sum_accumulates_in_float32():
    logits = torch.randn(2, 4, 8).bfloat16()
    loss_sum, _ = token_loss_sum(logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
    assert loss_sum.dtype == torch.float32


def test_token_loss_sum_gradient_does_not_depend_on_the_batch_split():
    model = _model(dropout=0.3).train()
    tokens = _tokens(6, length=9)
    inputs, targets, keys = tokens[:, :-1], tokens[:, 1:], torch.arange(6) + 40
    loss_mask = (torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) > 0.3).long()
    global_tokens = loss_mask.sum()

    model.zero_grad()
    loss_sum, _ = token_loss_sum(model(inputs, keys, step=3), targets, loss_mask)
    (loss_sum / global_tokens).backward()
    whole = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    for part in ([0, 4], [1], [5, 2, 3]):  # uneven micro-batches, out of order
        part_sum, _ = token_loss_sum(model(inputs[part], keys[part], step=3), targets[part], loss_mask[part])
        (part_sum / global_tokens).backward()

    for whole_grad, parameter in zip(whole, model.parameters()):
        assert torch.allclose(whole_grad, parameter.grad, atol=1e-6, rtol=1e-5)


def test_token_loss_sum_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"loss_mask \(2, 4\) must match targets"):
        token_loss_sum(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))


def test_build_model_uses_the_configured_factory():
    from tensile.model import build_model

    default = build_model(ModelConfig(d_model=32, n_heads=2, n_layers=1))
    assert isinstance(default, CausalLM)
    # Any importable callable taking the ModelConfig: here the default class by its path.
    plugged = build_model(ModelConfig(d_model=32, n_heads=2, n_layers=1, factory="tensile.model:CausalLM"))
    assert isinstance(plugged, CausalLM)
    with pytest.raises(ValueError, match="cannot be imported"):
        build_model(ModelConfig(factory="tensile.nowhere:build"))
    with pytest.raises(ValueError, match="package.module:callable"):
        ModelConfig(factory="not a path")


def test_frozen_prefixes_stop_training_those_parameters_and_keep_them_out_of_the_optimizer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, frozen=["position_embedding", "blocks.0."]))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert "position_embedding.weight" in frozen and "blocks.0.mlp_norm.bias" in frozen
    assert not any(name.startswith("blocks.1.") for name in frozen)
    grouped = {id(p) for group in parameter_groups(model, weight_decay=0.1) for p in group["params"]}
    assert all(id(p) not in grouped for name, p in model.named_parameters() if name in frozen)


def test_a_frozen_prefix_that_names_no_parameter_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"model.frozen: 'encoder' names no parameter.*token_embedding"):
        build_model(ModelConfig(**SMALL, frozen=["encoder"]))


def test_the_key_bias_gets_an_exact_zero_gradient_and_changes_no_output():
    """q·b_k shifts every score of a query alike, which softmax ignores: its true gradient is zero,
    and its computed one was rounding noise that Adam turned into learning-rate-sized steps
    (1e-3 apart after 200 steps between worker counts). Masked out, it gets exactly zero; and a
    b_k trained before (a checkpoint of the unmasked model) changes no output."""
    model = _model(dropout=0.0).double()
    tokens = _tokens(4)
    F.cross_entropy(model(tokens[:, :-1]).reshape(-1, SMALL["vocab_size"]), tokens[:, 1:].reshape(-1)).backward()
    width = SMALL["d_model"]
    for i in range(SMALL["n_layers"]):
        grad = model.blocks[i].attention.qkv_projection.bias.grad
        assert torch.equal(grad[width:2 * width], torch.zeros(width, dtype=grad.dtype)), f"block {i}'s key bias"
        assert grad[:width].abs().max() > 1e-6 and grad[2 * width:].abs().max() > 1e-6, "query and value biases learn"
    with torch.no_grad():
        masked = model(tokens[:, :-1])
        for block in model.blocks:
            block.attention.qkv_projection.bias[width:2 * width].normal_(0.0, 1.0)
        assert torch.equal(model(tokens[:, :-1]), masked)
        # The same bias through the plain projection (what older code computed) gives the same logits.
        for block in model.blocks:
            projection = block.attention.qkv_projection
            projection.forward = (lambda p: lambda h: F.linear(h, p.weight, p.bias))(projection)
        assert torch.allclose(model(tokens[:, :-1]), masked, rtol=0, atol=1e-10)
    # The mask is a bool buffer: a model cast to bf16 (as DeepSpeed casts it) still runs.
    low = _model(dropout=0.0).bfloat16()
    low(tokens[:, :-1]).float().sum().backward()
    assert torch.equal(low.blocks[0].attention.qkv_projection.bias.grad[width:2 * width],
                       torch.zeros(width, dtype=torch.bfloat16))

