"""ZeRO 1–3 state saved at one worker count resumes at another, with no manual step, and the
run keeps the trajectory of one that was never rescaled."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from harness import SLOW_STEPS, Script, final_weights, rounds, run_nodes, step_losses, write_job

from tensile.elastic.ledger import RunLedger

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def stop_everyone(cluster):
    for node_id in list(cluster.nodes):
        cluster.terminate(node_id)


def first_step_of_round(number: int):
    """True once the run's `number`-th round has completed a step (the previous round had the
    same size when two in a row do, so the size alone cannot tell them apart)."""
    def condition(events: list[dict]) -> bool:
        starts = [e for e in events if e["event"] == "round-start"]
        return len(starts) >= number and any(
            e["event"] == "step" and e["t"] > starts[number - 1]["t"] for e in events)
    return condition


def rescale_through(run_dir: Path, config: Path, sizes: list[int]) -> None:
    """Run the job in rounds of `sizes` workers; every round but the last is stopped (SIGTERM:
    agreed step, checkpoint, exit 143) once it has done a step."""
    names = (f"node{i}" for i in itertools.count())
    for i, world in enumerate(sizes):
        nodes = [next(names) for _ in range(world)]
        if i == len(sizes) - 1:
            codes = run_nodes(run_dir, config, nodes)
            assert set(codes.values()) == {0}, (sizes, codes)
        else:
            codes = run_nodes(run_dir, config, nodes, env=SLOW_STEPS,
                              driver=Script((first_step_of_round(i + 1), stop_everyone)))
            assert set(codes.values()) == {143}, (sizes[:i + 1], codes)


def assert_same_trajectory(shared: Path, reference: Path, sizes: list[int], label: str) -> None:
    ledger = RunLedger(shared)
    assert [r["world_size"] for r in rounds(shared)] == sizes
    changes = [(a, b) for a, b in zip(sizes, sizes[1:]) if a != b]
    assert [(e["from_world_size"], e["to_world_size"]) for e in ledger.events() if e["event"] == "reshard"] == changes
    assert ledger.failures_spent() == 0
    losses, expected = step_losses(shared), step_losses(reference)
    steps_done = [e["step"] for e in ledger.events() if e["event"] == "step"]
    assert sorted(steps_done) == sorted(expected), "every step (and so every sample) exactly once"
    worst = max(abs(losses[s] - expected[s]) / expected[s] for s in expected)
    weights, reference_weights = final_weights(shared), final_weights(reference)
    worst_weight = max((weights[k] - reference_weights[k]).abs().max().item() for k in reference_weights)
    print(f"{label}: max relative loss difference {worst:.2e}, max abs weight difference {worst_weight:.2e}")
    assert worst <= LOSS_RTOL, f"per-step loss differs by up to {worst:.2e}"
    assert worst_weight <= WEIGHT_ATOL, f"final weights differ by up to {worst_weight:.2e}"


# ZeRO-2 resharding stays in make test through test_nodes.py (4 → 2 ranks) and the corrupt-chunk
# fallback (2 → 3); its 2 → 1 → 3 → 2 walk runs in test-full.
@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.full), pytest.param(2, marks=pytest.mark.full), 3])
def test_rescale_2_to_1_to_3_to_2_keeps_trajectory(tmp_path, dataset, fixed_size_runs, stage):
    # The reference: the same job at 2 workers, never disturbed (ZeRO-0; the trajectory does
    # not depend on the stage).
    reference = fixed_size_runs[0]["uninterrupted"] / "shared"
    run_dir = tmp_path / "run"
    sizes = [2, 1, 3, 2]
    rescale_through(run_dir, write_job(run_dir, dataset, zero={"stage": stage}), sizes)
    assert_same_trajectory(run_dir / "shared", reference, sizes, f"ZeRO-{stage} 2→1→3→2")


# Every ordered pair (N, M) in {1, 2, 3}² appears once as consecutive sizes.
EVERY_PAIR = [1, 1, 2, 2, 3, 3, 1, 3, 2, 1]
LONG_RUN = {"steps": 20}


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory, dataset) -> Path:
    run_dir = tmp_path_factory.mktemp("long-reference")
    config = write_job(run_dir, dataset, run=LONG_RUN)
    assert run_nodes(run_dir, config, ["a", "b"]) == {"a": 0, "b": 0}
    return run_dir / "shared"


@pytest.mark.full
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_resize_between_1_2_and_3_workers_keeps_trajectory(tmp_path, dataset, long_reference, stage):
    assert {(a, b) for a, b in zip(EVERY_PAIR, EVERY_PAIR[1:])} == set(itertools.product([1, 2, 3], repeat=2))
    run_dir = tmp_path / "run"
    rescale_through(run_dir, write_job(run_dir, dataset, run=LONG_RUN, zero={"stage": stage}), EVERY_PAIR)
    assert_same_trajectory(run_dir / "shared", long_reference, EVERY_PAIR, f"ZeRO-{stage} every N→M")


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
