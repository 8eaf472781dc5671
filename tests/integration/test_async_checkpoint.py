"""Periodic checkpoints of ZeRO 1–3 state persist in the background: the loop goes on."""

from __future__ import annotations

import pytest
from harness import SLOW_STEPS, Script, at_step, rounds, run_nodes, write_job

from tensile.checkpoint import Catalog, DirectoryTier
from tensile.elastic.ledger import RunLedger


def test_periodic_checkpoints_persist_while_training_goes_on_one_at_a_time(tmp_path, dataset):
    # Each background save is held 1.5 s before it writes; a step takes about 0.25 s, so a save
    # every 3 steps is still in flight when the next one is due.
    config = write_job(tmp_path, dataset, zero={"stage": 2})
    codes = run_nodes(tmp_path, config, ["a", "b"], env={**SLOW_STEPS, "TENSILE_FAULT_PERSIST_DELAY_S": "1.5"})
    assert codes == {"a": 0, "b": 0}
    shared = tmp_path / "shared"
    events = RunLedger(shared).events()
    saves = [e for e in events if e["event"] == "checkpoint"]
    assert [(e["step"], e["reason"], e.get("asynchronous", False)) for e in saves] == [
        (3, "periodic", True), (6, "periodic", True), (9, "periodic", True), (12, "final", False)]
    steps = {e["step"]: e["t"] for e in events if e["event"] == "step"}
    for save in saves[:-1]:
        # Published after later steps were done: the loop did not wait for it.
        assert steps[save["step"] + 1] < save["t"], f"step {save['step'] + 1} waited for the save"
    # One at a time, in order: the commit log holds them in step order, none skipped or failed.
    committed = [r.step for r in Catalog(DirectoryTier(shared)).committed()]
    assert committed == [3, 6, 9, 12]
    assert not [e for e in events if e["event"] == "checkpoint-failed"]


@pytest.mark.full
def test_sigterm_during_a_background_save_lets_it_finish_then_saves_the_stop(tmp_path, dataset):
    # The step-3 save is held 3 s in the background; SIGTERM (pod deletion) lands meanwhile.
    config = write_job(tmp_path, dataset, zero={"stage": 1})
    held = {**SLOW_STEPS, "TENSILE_FAULT_PERSIST_DELAY_S": "3"}
    everyone = lambda cluster: [cluster.terminate(n) for n in list(cluster.nodes)]  # noqa: E731
    codes = run_nodes(tmp_path, config, ["a", "b"], env=held, driver=Script((at_step(4), everyone)))
    assert codes == {"a": 143, "b": 143}
    shared = tmp_path / "shared"
    events = RunLedger(shared).events()
    saves = [(e["step"], e["reason"]) for e in events if e["event"] == "checkpoint"]
    assert saves[0] == (3, "periodic") and saves[-1][1] == "stop", saves
    stop_step = saves[-1][0]
    assert [r.step for r in Catalog(DirectoryTier(shared)).committed()] == [3, stop_step]
    # The next start resumes at the stop checkpoint: no step lost.
    assert run_nodes(tmp_path, config, ["c"]) == {"c": 0}
    done_before = max(e["step"] for e in events if e["event"] == "step")
    assert rounds(shared)[-1]["resumed_step"] == stop_step == done_before


def test_a_failed_part_of_a_background_save_reaches_rank_0_within_a_step_and_the_next_save_succeeds(
        tmp_path, dataset):
    # Rank 1's part of the step-3 save fails. Rank 0 waits for every rank's files before it
    # publishes: before the failure was shared it waited persist_timeout_s (here 120 s) and
    # blocked the step-6 save behind it.
    config = write_job(tmp_path, dataset, zero={"stage": 2}, checkpoint={"persist_timeout_s": 120})
    codes = run_nodes(tmp_path, config, ["a", "b"], timeout_s=240,
                      env={**SLOW_STEPS, "TENSILE_FAULTS": "fail-persist@3"})
    assert codes == {"a": 0, "b": 0}
    shared = tmp_path / "shared"
    events = RunLedger(shared).events()
    failed = [e for e in events if e["event"] == "checkpoint-failed"]
    assert [(e["step"], e["error"].startswith("SaveAbandoned: abandoned")) for e in failed] == [(3, True)], failed
    steps = {e["step"]: e["t"] for e in events if e["event"] == "step"}
    assert failed[0]["t"] - steps[3] < 15, "rank 0 heard of it within a few steps, not persist_timeout_s"
    committed = [r.step for r in Catalog(DirectoryTier(shared)).committed()]
    assert committed == [6, 9, 12], "the next interval's save succeeded; nothing else was lost"
    assert RunLedger(shared).failures_spent() == 0 and len(rounds(shared)) == 1
