"""Precision: the config and its support table per ZeRO stage, what DeepSpeed is told, which
checkpoints resume in another precision, and fp16's loss scaler through the sharded layout."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tensile.batching import plan_batch
from tensile.checkpoint import Catalog, open_tier
from tensile.checkpoint.engine import incompatibility
from tensile.checkpoint.ranges import DirectoryRanges
from tensile.checkpoint.sharded.layout import META
from tensile.checkpoint.sharded.restore import read_meta, restore_loss_scaling, saved_precision
from tensile.checkpoint.sharded.snapshot import ShardSnapshot, loss_scaling_state
from tensile.config import ConfigError, config_from_dict
from tensile.trainer import deepspeed_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "format-v2"


def test_precision_defaults_to_fp32_and_old_configs_load_unchanged():
    config = config_from_dict({"zero": {"stage": 2}})
    assert (config.precision.dtype, config.precision.accumulate_grads_in_fp32) == ("fp32", False)
    assert config.trajectory_hash() == config_from_dict({"zero": {"stage": 2}, "precision": "bf16"}).trajectory_hash(), \
        "precision is judged by the checkpoint, not by the trajectory hash older runs recorded"


def test_precision_takes_a_plain_dtype_or_a_section():
    assert config_from_dict({"precision": "bf16"}).precision.dtype == "bf16"
    assert config_from_dict({"precision": {"dtype": "fp16"}}).precision.dtype == "fp16"


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(ConfigError) as refused:
        config_from_dict({"precision": "fp8"})
    assert refused.value.problems == [("precision.dtype", "must be one of fp32, bf16, fp16, got 'fp8'")]


# The support table (docs/design/precision.md): every stage trains fp32, bf16 and fp16 (fp16 on
# GPUs); fp32 gradient accumulation under bf16/fp16 only at ZeRO-3.
@pytest.mark.parametrize(("stage", "dtype", "why"), [
    (0, "bf16", "no optimizer for it without ZeRO"),
    (1, "bf16", "switches to its BF16_Optimizer, whose partitions Tensile's sharded checkpoints do not read"),
    (2, "bf16", "ZeRO-2 optimizer ignores it and accumulates in bf16"),
    (1, "fp16", "ZeRO-1 optimizer ignores it and accumulates in fp16"),
    (2, "fp16", "ZeRO-2 optimizer ignores it and accumulates in fp16"),
])
def test_fp32_gradient_accumulation_is_refused_below_zero3_naming_the_alternative(stage, dtype, why):
    with pytest.raises(ConfigError) as refused:
        config_from_dict({"zero": {"stage": stage}, "precision": {"dtype": dtype, "accumulate_grads_in_fp32": True}})
    [(path, message)] = refused.value.problems
    assert path == "precision.accumulate_grads_in_fp32"
    assert why in message and "set zero.stage to 3, or precision.accumulate_grads_in_fp32 to false" in message


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_every_stage_trains_every_precision_accumulating_in_it(stage, dtype):
    config = config_from_dict({"zero": {"stage": stage}, "precision": dtype})
    section = deepspeed_config(config, plan_batch(16, [1, 2, 4, 8], 2))
    assert ("bf16" in section, "fp16" in section, "data_types" in section) == (dtype == "bf16", dtype == "fp16", False)


def test_deepspeed_is_told_bf16_or_a_dynamic_fp16_loss_scale_and_fp32_accumulation_at_zero3():
    plan = plan_batch(16, [1, 2, 4, 8], 2)
    bf16 = deepspeed_config(config_from_dict({"zero": {"stage": 3}, "precision": {
        "dtype": "bf16", "accumulate_grads_in_fp32": True}}), plan)
    assert bf16["bf16"] == {"enabled": True} and bf16["data_types"] == {"grad_accum_dtype": "fp32"}
    fp16 = deepspeed_config(config_from_dict({"precision": "fp16"}), plan)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0, "0 is DeepSpeed's dynamic loss scale"


# ---- which checkpoints resume in another precision -----------------------------------------

def _fixture_manifest(name: str):
    return Catalog(open_tier(FIXTURES / name / "shared")).find_resume_point().manifest


def test_manifests_from_before_precision_read_as_fp32():
    for name in ("zero0-deepspeed-1worker", "zero2-sharded-2workers"):
        assert _fixture_manifest(name).precision == "fp32"
    directory = next((FIXTURES / "zero2-sharded-2workers" / "shared" / "checkpoints").iterdir())
    meta = read_meta(DirectoryRanges(directory), (directory / META).stat().st_size, what="fixture")
    assert "precision" not in meta and saved_precision(meta) == "fp32"


def test_a_sharded_checkpoint_resumes_in_any_precision():
    manifest = _fixture_manifest("zero2-sharded-2workers")
    for precision in ("fp32", "bf16", "fp16"):
        assert incompatibility(manifest, zero_stage=2, world_size=1, model_hash=manifest.model_hash,
                               precision=precision) is None


def test_deepspeeds_own_files_resume_only_in_their_precision_naming_both():
    manifest = _fixture_manifest("zero0-deepspeed-1worker")
    assert incompatibility(manifest, zero_stage=0, world_size=1, model_hash=manifest.model_hash,
                           precision="fp32") is None
    problem = incompatibility(manifest, zero_stage=0, world_size=1, model_hash=manifest.model_hash, precision="bf16")
    assert problem is not None and manifest.checkpoint_id in problem
    assert "was saved in fp32 and this config trains in bf16" in problem and "set precision.dtype to fp32" in problem


# ---- fp16's loss scaler through the sharded layout ------------------------------------------

def _scaler(**state):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(init_scale=2 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    for key, value in state.items():
        setattr(scaler, key, value)
    return scaler


def _saved_and_read_back(tmp_path, meta: dict) -> dict:
    import io

    buffer = io.BytesIO()
    torch.save(meta, buffer)
    ShardSnapshot(rank=0, tensors={}, metadata={}, meta=buffer.getvalue()).write(tmp_path)
    return read_meta(DirectoryRanges(tmp_path), (tmp_path / META).stat().st_size, what="test")


def test_the_fp16_loss_scale_resumes_where_it_was(tmp_path):
    # After overflows: halved twice, a hysteresis spent, 37 clean steps since the last overflow.
    trained = SimpleNamespace(loss_scaler=_scaler(cur_scale=2.0 ** 14, cur_iter=140, last_overflow_iter=103,
                                                  cur_hysteresis=1), dynamic_loss_scale=True, overflow=False)
    meta = _saved_and_read_back(tmp_path, {"precision": "fp16", "loss_scaling": loss_scaling_state(trained)})
    fresh = SimpleNamespace(loss_scaler=_scaler(), dynamic_loss_scale=True, overflow=False)
    restore_loss_scaling(fresh, meta, "fp16")
    scaler = fresh.loss_scaler
    assert (scaler.cur_scale, scaler.cur_iter, scaler.last_overflow_iter, scaler.cur_hysteresis, scaler.scale_window) \
        == (2.0 ** 14, 140, 103, 1, 1000)
    assert scaler.loss_scale == 2.0 ** 14


@pytest.mark.parametrize(("saved", "resumed"), [("fp16", "bf16"), ("fp32", "fp16"), ("bf16", "fp16")])
def test_a_loss_scaler_of_another_precision_is_not_carried_over(tmp_path, saved, resumed):
    trained = SimpleNamespace(loss_scaler=_scaler(cur_scale=8.0), dynamic_loss_scale=saved == "fp16")
    meta = _saved_and_read_back(tmp_path, {"precision": saved, "loss_scaling": loss_scaling_state(trained)})
    own = _scaler()
    fresh = SimpleNamespace(loss_scaler=own, dynamic_loss_scale=resumed == "fp16")
    restore_loss_scaling(fresh, meta, resumed)
    assert fresh.loss_scaler is own and own.cur_scale == 2 ** 16
