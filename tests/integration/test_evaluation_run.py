"""The trainer's held-out loss: recorded in the ledger every eval.every_steps, and as TensorBoard scalars."""

from __future__ import annotations

import math

import pytest

from harness import run_nodes, step_losses, write_job

from tensile.data import generate_corpus
from tensile.elastic.ledger import RunLedger


@pytest.mark.parametrize("stage", [0, 3])  # ZeRO-3: the eval forward gathers partitioned weights
def test_a_run_records_the_held_out_loss_every_eval_steps_and_in_tensorboard(tmp_path, stage):
    data = str(tmp_path / "corpus")
    generate_corpus(data, num_samples=300, seq_len=32, seed=3, held_out_samples=24)
    config = write_job(tmp_path, data, eval={"every_steps": 5, "micro_batch_size": 8}, zero={"stage": stage},
                       run={"tensorboard_dir": str(tmp_path / "tensorboard")})
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 0}
    evals = [e for e in RunLedger(tmp_path / "shared").events() if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [5, 10, 12]  # every 5 steps, and after the last
    assert all(e["samples"] == 24 and e["targets"] == 24 * 32 and e["world_size"] == 1 for e in evals)
    losses = step_losses(tmp_path / "shared")
    for e in evals:  # the same data distribution: near the training loss, not equal to it
        assert math.isfinite(e["loss"]) and abs(e["loss"] - losses[e["step"]]) < 0.5 * losses[e["step"]], (e, losses)
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert b"loss/eval" in events and b"loss/train" in events and b"world_size" in events
