"""ZeRO 1–3 state saved at one worker count resumes at another, with no manual step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness import SLOW_STEPS, Script, at_step, rounds, run_nodes, step_losses, write_job

from tensile.demo import final_weights
from tensile.ledger import RunLedger

LOSS_RTOL = 1e-5


def stop_everyone(cluster):
    for node_id in list(cluster.nodes):
        cluster.terminate(node_id)


@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.full), 2, 3])
def test_rescale_2_to_1_to_3_keeps_trajectory(tmp_path, dataset, fixed_size_runs, stage):
    # The same job at 2 workers, never disturbed (ZeRO-0: the trajectory does not depend on the stage).
    reference = fixed_size_runs[0]["uninterrupted"] / "shared"
    run_dir = tmp_path / "run"
    config = write_job(run_dir, dataset, zero={"stage": stage})
    # 2 workers until a stop at step 4 (SIGTERM: agreed step, checkpoint, exit 143) ...
    codes = run_nodes(run_dir, config, ["a", "b"], env=SLOW_STEPS,
                      driver=Script((at_step(4), stop_everyone)))
    assert set(codes.values()) == {143}, codes
    # ... then 1 worker until a stop at step 8 ...
    codes = run_nodes(run_dir, config, ["c"], env=SLOW_STEPS, driver=Script((at_step(8), stop_everyone)))
    assert codes == {"c": 143}
    # ... then 3 workers to the end.
    assert run_nodes(run_dir, config, ["d", "e", "f"]) == {"d": 0, "e": 0, "f": 0}

    shared = run_dir / "shared"
    events = RunLedger(shared).events()
    reshards = [(e["from_world_size"], e["to_world_size"]) for e in events if e["event"] == "reshard"]
    assert reshards == [(2, 1), (1, 3)]
    assert [r["world_size"] for r in rounds(shared)] == [2, 1, 3]
    assert RunLedger(shared).failures_spent() == 0
    losses, expected = step_losses(shared), step_losses(reference)
    assert sorted(losses) == list(range(1, 13))
    worst = max(abs(losses[s] - expected[s]) / expected[s] for s in expected)
    assert worst <= LOSS_RTOL, f"per-step loss differs by up to {worst:.2e}"
    weights, reference_weights = final_weights(shared), final_weights(reference)
    worst_weight = max((weights[k] - reference_weights[k]).abs().max().item() for k in reference_weights)
    assert worst_weight <= 1e-5, f"final weights differ by up to {worst_weight:.2e}"
    print(f"ZeRO-{stage} 2→1→3: max relative loss difference {worst:.2e}, weights {worst_weight:.2e}")


def resume_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source / "shared", target / "shared")
    (target / "shared" / "status.json").unlink()
    return target / "shared"


@pytest.mark.parametrize(("stage", "change", "expected"), [
    (3, {"zero": {"stage": 2}}, "set zero.stage to 3"),
    pytest.param(0, {"model": {"d_model": 48}}, "another model shape", marks=pytest.mark.full),
    pytest.param(0, {"zero": {"stage": 1}}, "set zero.stage to 0", marks=pytest.mark.full),
])
def test_incompatible_checkpoint_stops_the_run_naming_what_differs(tmp_path, dataset, fixed_size_runs,
                                                                     stage, change, expected):
    shared = resume_copy(fixed_size_runs[stage]["uninterrupted"], tmp_path)
    commits_before = sorted(p.name for p in (shared / "commits").iterdir())
    config = write_job(tmp_path, dataset, **{"zero": {"stage": stage}, **change})
    assert run_nodes(tmp_path, config, ["solo"]) == {"solo": 3}
    status = RunLedger(shared).status()
    assert status["state"] == "failed" and expected in status["reason"], status
    assert "step-00000012" in status["reason"], "names the checkpoint"
    assert sorted(p.name for p in (shared / "commits").iterdir()) == commits_before, "nothing overwritten"
    assert RunLedger(shared).failures_spent() == 0, "not retried: no budget spent"
