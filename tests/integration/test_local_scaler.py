"""The scaler's local actuator on real processes: a job started at its minimum grows 1 -> 2 when
spot capacity appears, and shrinks back at a price spike through an agreed stop (SIGTERM) that
loses no step; each decision is printed with its reason."""

from __future__ import annotations

import dataclasses

import pytest
from harness import SLOW_STEPS, rounds, tail_logs, write_job

from tensile.config import load_config
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster
from tensile.local.scaling import LocalScaler
from tensile.scaler import PoolMarket, ReasonKind, TeamState, load_scaler_config

POOL = PoolMarket(pool="cpu-spot", on_demand_usd_per_hour=8.0, spot_usd_per_hour=2.0, spot_nodes_available=0)


class LedgerKeyedMarket:
    """No spot offer until the job has trained 4 steps at 1 node; one offer at $2/h then; the price
    spikes to $50/h once it has trained 4 steps at 2 nodes. Keyed on the run's progress, not the
    wall clock, so the scenario holds on a busy machine."""

    def __init__(self, ledger: RunLedger):
        self.ledger = ledger

    def __call__(self, elapsed_s: float) -> PoolMarket:
        steps_at = {1: 0, 2: 0}
        for event in self.ledger.events():
            if event["event"] == "step" and event["world_size"] in steps_at:
                steps_at[event["world_size"]] += 1
        if steps_at[2] >= 4:
            return dataclasses.replace(POOL, spot_usd_per_hour=50.0, spot_nodes_available=1)
        if steps_at[1] >= 4:
            return dataclasses.replace(POOL, spot_nodes_available=1)
        return POOL


# 44-70 s on 2 busy cores: make test-full; the actuator's logic is in make test without processes
# (tests/training/local/test_scaling.py).
@pytest.mark.full
def test_local_scaler_grows_when_capacity_appears_and_shrinks_at_a_price_spike(tmp_path, dataset):
    config_path = write_job(tmp_path, dataset, run={"name": "itest", "seed": 11, "steps": 80, "log_every": 20},
                            elastic={"min_nodes": 1, "max_nodes": 2})
    training = load_config(config_path)
    scaler = load_scaler_config({
        # A long cool-down: on CPU with a fixed per-step delay, 2 nodes are no faster than 1, and the
        # collapse rule would shrink first; the price trigger ignores the cool-down.
        "cooldown_min_s": 1, "cooldown_recovery_multiple": 20, "grow_on_demand": False,
        "triggers": [{"action": "shrink_to_min", "spot_price_above_usd_per_hour": 20.0, "pool": "cpu-spot"}]})
    team = TeamState(gpu_quota=4, borrowing_limit=0, gpus_in_use=0, spend_usd=0.0, budget_usd=1_000.0)
    ledger = RunLedger(tmp_path / "shared")
    printed: list[str] = []
    with LocalCluster(tmp_path, config_path, env={"TENSILE_FAULTS_DIR": str(tmp_path / "faults"), **SLOW_STEPS}) as cluster:
        cluster.start_store()
        actuator = LocalScaler(cluster, ledger, training=training, scaler=scaler, market=LedgerKeyedMarket(ledger),
                               team=team, pool="cpu-spot", decide_every_s=0.5, first_recovery_s=2.0,
                               progress=lambda line: (printed.append(line), print(line)))
        assert actuator.run(timeout_s=300), tail_logs(tmp_path)
        codes = {node_id: node.process.returncode for node_id, node in cluster.nodes.items()}
    sized = [(decision.kind, decision.desired_nodes) for _, _, decision in actuator.log.decisions
             if decision.kind is not ReasonKind.HOLD]
    assert sized == [(ReasonKind.GROW, 2), (ReasonKind.SHRINK_TRIGGER, 1)], printed
    assert codes == {"node-0": 0, "node-1": 143}, codes  # node-1 stopped by SIGTERM after saving
    assert ledger.status()["state"] == "completed" and ledger.failures_spent() == 0
    starts = rounds(tmp_path / "shared")
    assert [r["world_size"] for r in starts] == [1, 2, 1], starts
    steps = [e for e in ledger.events() if e["event"] == "step"]
    for start in starts[1:]:
        done_before = max(e["step"] for e in steps if e["t"] < start["t"])
        assert start["resumed_step"] == done_before, "a resize through the agreed stop loses no step"
    assert any("no capacity on offer" in line for line in printed), printed
    assert any("grow -> 2: spot node at $2.00/h" in line for line in printed), printed
    assert any("shrink-trigger -> 1" in line and "spot_price_above_usd_per_hour=20.0" in line for line in printed), printed
