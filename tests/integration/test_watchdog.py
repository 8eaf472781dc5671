"""The step watchdog follows the steps the round actually takes: a round whose steps are longer
than `elastic.step_watchdog_s` (as after a large scale-down, when each rank carries more of the
global batch) trains on instead of ending every step as hung."""

from __future__ import annotations

from harness import run_nodes, write_job

from tensile.elastic.ledger import RunLedger


def test_steps_longer_than_the_configured_watchdog_are_not_hangs(tmp_path, dataset):
    # Each step takes over 1 s; the configured watchdog is 0.6 s. Before the watchdog followed
    # the measured steps, every round ended as hung after its first step, forever.
    config = write_job(tmp_path, dataset, run={"steps": 6}, elastic={"step_watchdog_s": 0.6})
    codes = run_nodes(tmp_path, config, ["a"], timeout_s=180, env={"TENSILE_FAULT_STEP_DELAY_S": "1.0"})
    assert codes == {"a": 0}
    ledger = RunLedger(tmp_path / "shared")
    assert not [e for e in ledger.events() if e["event"] == "hang"]
    assert ledger.status()["state"] == "completed"
