"""Resume at the same worker count is exact; a real failure spends the budget once."""

import pytest
from harness import assert_bit_identical, checkpoint_tensors, rounds, step_losses

from tensile.elastic.ledger import RunLedger


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.full),
                                   pytest.param(2, marks=pytest.mark.full), 3])
def test_resume_same_size_is_bit_identical(fixed_size_runs, stage):
    pair = fixed_size_runs[stage]
    uninterrupted = checkpoint_tensors(pair["uninterrupted"] / "shared")
    resumed = checkpoint_tensors(pair["interrupted"] / "shared")
    # Parameters, fp32 master weights, Adam moments and step counts, scheduler state.
    optimizer_state = "optim" if stage == 0 else "exp_avg_sq/"  # DeepSpeed's files / Tensile's shards
    assert any(optimizer_state in key for key in resumed)
    assert_bit_identical(uninterrupted, resumed)
    assert step_losses(pair["uninterrupted"] / "shared") == step_losses(pair["interrupted"] / "shared")


@pytest.mark.parametrize("stage", [0, 3])
def test_real_failure_spends_budget_once(fixed_size_runs, stage):
    shared = fixed_size_runs[stage]["interrupted"] / "shared"
    events = RunLedger(shared).events()
    failures = [e for e in events if e["event"] == "failure"]
    assert len(failures) == 1 and "injected failure at step 7" in failures[0]["error"]
    assert RunLedger(shared).failures_spent() == 1
    starts = rounds(shared)
    assert [r["world_size"] for r in starts] == [2, 2]
    assert starts[1]["resumed_step"] == 6  # the newest checkpoint before the failure
    assert RunLedger(shared).status()["state"] == "completed"


def test_uninterrupted_run_spends_nothing(fixed_size_runs):
    shared = fixed_size_runs[0]["uninterrupted"] / "shared"
    assert RunLedger(shared).failures_spent() == 0
    assert len(rounds(shared)) == 1
