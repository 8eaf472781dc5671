"""Several processes per node: 2 nodes × 2 processes (world size 4) lose a node and go on at
1 node × 2 processes, resharding ZeRO-2 state from 4 to 2 ranks, on the trajectory of an
undisturbed single-process run. Node-level duties (the outcome file, leaving the rendezvous)
stay with the node's local rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import (SLOW_STEPS, Script, at_step, final_weights, rounds, run_nodes, step_losses, tail_logs,
                     write_job)

from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
TWO_PROCESSES = {"min_nodes": 1, "max_nodes": 2, "processes_per_node": 2}
TIMEOUT_S = 420
"""Four DeepSpeed processes (and their guards) on two busy cores."""


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, dataset) -> Path:
    """The same job on one node of one process, never disturbed."""
    run_dir = tmp_path_factory.mktemp("reference")
    assert run_nodes(run_dir, write_job(run_dir, dataset), ["solo"], timeout_s=TIMEOUT_S) == {"solo": 0}
    return run_dir / "shared"


def assert_same_trajectory(shared: Path, reference: Path) -> None:
    losses, expected = step_losses(shared), step_losses(reference)
    assert sorted(losses) == sorted(expected), "every step of the run exactly once in the lineage"
    worst = max(abs(losses[s] - expected[s]) / abs(expected[s]) for s in expected)
    weights, reference_weights = final_weights(shared), final_weights(reference)
    worst_weight = max((weights[k] - reference_weights[k]).abs().max().item() for k in reference_weights)
    print(f"max relative loss difference {worst:.2e}, max weight difference {worst_weight:.2e}")
    assert worst <= LOSS_RTOL, f"per-step loss differs by up to {worst:.2e} (relative)"
    assert worst_weight <= WEIGHT_ATOL, f"final weights differ by up to {worst_weight:.2e}"


def test_two_nodes_of_two_processes_lose_a_node_and_reshard_onto_the_survivors_two(tmp_path, dataset,
                                                                                   reference_run):
    config = write_job(tmp_path, dataset, elastic=TWO_PROCESSES, zero={"stage": 2})
    script = Script((at_step(4, world=4), lambda cluster: cluster.kill("node-b")))
    codes = run_nodes(tmp_path, config, ["node-a", "node-b"], env=SLOW_STEPS, driver=script, timeout_s=TIMEOUT_S)
    shared = tmp_path / "shared"
    assert codes["node-a"] == 0, tail_logs(tmp_path)
    ledger = RunLedger(shared)
    assert ledger.status()["state"] == "completed"
    assert ledger.failures_spent() == 0, "a lost node of two processes is one membership change, not a failure"
    assert [r["world_size"] for r in rounds(shared)] == [4, 2]
    assert [(e["from_world_size"], e["to_world_size"]) for e in ledger.events() if e["event"] == "reshard"] == [(4, 2)]
    # The survivor's node outcome is its local rank 0's, written whole.
    outcome = json.loads((tmp_path / "nodes" / "node-a" / "outcome.json").read_text())
    assert outcome["outcome"] == "completed"
    assert_same_trajectory(shared, reference_run)


@pytest.mark.full
def test_sigtermed_node_of_two_processes_leaves_the_rendezvous_once(tmp_path, dataset, reference_run):
    """A graceful stop (pod deletion) of a 2-process node: both ranks save the agreed step, its
    local rank 0 takes the node out of the rendezvous (once, not per process) and writes the
    outcome; the survivors' round forms well before the node's heartbeat could expire."""
    heartbeat_expiry_s = 60 * 3
    config = write_job(tmp_path, dataset, elastic={**TWO_PROCESSES, "keep_alive_interval_s": 60},
                       zero={"stage": 2}, checkpoint={"every_steps": 100})
    ledger = RunLedger(tmp_path / "shared")
    with LocalCluster(tmp_path, config, env=SLOW_STEPS) as cluster:
        script = Script((at_step(4, world=4), lambda cluster: cluster.terminate("node-b")))
        cluster.start_store()
        cluster.start_node("node-a")
        cluster.start_node("node-b")
        finished = cluster.wait(heartbeat_expiry_s - 30, on_poll=lambda: script(cluster, ledger))
        assert finished, tail_logs(tmp_path)
        codes = {n: node.process.returncode for n, node in cluster.nodes.items()}
    assert codes == {"node-a": 0, "node-b": 143}, codes
    leaves = [e for e in ledger.events() if e["event"] == "rendezvous-leave"]
    assert [(e["node"], e["by"]) for e in leaves] == [("node-b", "worker")], leaves
    outcome = json.loads((tmp_path / "nodes" / "node-b" / "outcome.json").read_text())
    assert (outcome["outcome"], outcome["left_rendezvous"]) == ("stopped", True)
    starts = rounds(tmp_path / "shared")
    assert [r["world_size"] for r in starts] == [4, 2]
    assert starts[-1]["t"] - script.done_at[0] < heartbeat_expiry_s
    assert ledger.failures_spent() == 0 and ledger.status()["state"] == "completed"
    assert_same_trajectory(tmp_path / "shared", reference_run)
