"""A node that is told to go (spot interruption notice, SIGTERM) saves, leaves, and takes itself
out of the rendezvous: the survivors re-form at the smaller size with no step lost and without
waiting for its heartbeat to expire.

The heartbeat expiry here (60 s × 3) is longer than each whole run, so a survivors' round that
forms at all can only have formed because the leaving node took itself out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import SLOW_STEPS, Script, at_step, rounds, write_job

from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster
from tensile.local.metadata_server import MetadataServer

KEEP_ALIVE = {"keep_alive_interval_s": 60, "keep_alive_max_attempts": 3}
HEARTBEAT_EXPIRY_S = 60 * 3
JOB = {"run": {"name": "itest", "seed": 11, "steps": 18, "log_every": 6},
       "elastic": {"min_nodes": 1, "max_nodes": 2, **KEEP_ALIVE},
       "checkpoint": {"every_steps": 100}, "signals": {"imds_enabled": True, "imds_poll_s": 0.1}}


def run_and_leave(tmp_path: Path, dataset: str, leave) -> tuple[dict[str, int], RunLedger, float]:
    """Two nodes; once both train, leave(cluster, doomed_imds) makes node-b go."""
    config = write_job(tmp_path, dataset, **JOB)
    ledger = RunLedger(tmp_path / "shared")
    with MetadataServer() as doomed, MetadataServer() as quiet, \
            LocalCluster(tmp_path, config, env=SLOW_STEPS) as cluster:
        script = Script((at_step(5, world=2), lambda cluster: leave(cluster, doomed)))
        cluster.start_store()
        cluster.start_node("node-a", extra_env={"TENSILE_IMDS_ENDPOINT": quiet.endpoint})
        cluster.start_node("node-b", extra_env={"TENSILE_IMDS_ENDPOINT": doomed.endpoint})
        # Well inside the heartbeat expiry: a survivor waiting for it would not finish.
        finished = cluster.wait(HEARTBEAT_EXPIRY_S - 30, on_poll=lambda: script(cluster, ledger))
        assert finished, f"the run did not finish; logs in {tmp_path / 'logs'}"
        codes = {n: node.process.returncode for n, node in cluster.nodes.items()}
    return codes, ledger, script.done_at[0]


def assert_left_and_resumed(ledger: RunLedger, shared: Path, asked_at: float) -> None:
    events = ledger.events()
    starts = rounds(shared)
    assert [r["world_size"] for r in starts[-2:]] == [2, 1], [r["world_size"] for r in starts]
    survivors_round = starts[-1]
    # Zero steps lost: the survivor resumed at the agreed stop step, the last step done at 2.
    stop_step = next(e["step"] for e in events if e["event"] == "checkpoint" and e["reason"] == "stop")
    done_before = max(e["step"] for e in events if e["event"] == "step" and e["t"] < survivors_round["t"])
    assert survivors_round["resumed_step"] == stop_step == done_before
    # node-b's agent was taken out of the rendezvous, after it had saved and before the
    # survivor's round began ...
    leaves = [e for e in events if e["event"] == "rendezvous-leave"]
    assert [e["node"] for e in leaves] == ["node-b"], leaves
    assert any(entry.startswith("participants:") for entry in leaves[0]["removed"]), leaves[0]
    assert asked_at < leaves[0]["t"] < survivors_round["t"]
    # ... so the survivor's round formed long before node-b's heartbeat could have expired.
    assert survivors_round["t"] - asked_at < HEARTBEAT_EXPIRY_S
    assert ledger.failures_spent() == 0 and ledger.status()["state"] == "completed"


def test_noticed_node_leaves_the_rendezvous_and_survivor_resumes_at_once(tmp_path, dataset):
    codes, ledger, asked_at = run_and_leave(tmp_path, dataset, lambda cluster, imds: imds.interrupt())
    assert codes == {"node-a": 0, "node-b": 143}, codes
    assert_left_and_resumed(ledger, tmp_path / "shared", asked_at)


@pytest.mark.full  # the noticed leave above takes the same path out of the rendezvous in make test
def test_sigtermed_node_leaves_the_rendezvous_and_survivor_resumes_at_once(tmp_path, dataset):
    codes, ledger, asked_at = run_and_leave(tmp_path, dataset, lambda cluster, imds: cluster.terminate("node-b"))
    assert codes == {"node-a": 0, "node-b": 143}, codes
    assert_left_and_resumed(ledger, tmp_path / "shared", asked_at)
