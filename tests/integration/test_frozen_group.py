"""A frozen group resumed after the live group re-formed cannot publish; the live group finishes.

The node of rank 0 is frozen (SIGSTOP, every process: sockets stay open, no heartbeat) while its
background save is still persisting; the other node re-forms alone, claims a newer epoch and
trains on. Then the frozen node is resumed (SIGCONT): its save goes on where it stopped and tries
to publish as the old epoch — refused — and its worker, dropped from the rendezvous, re-forms
instead of exiting 0 (which would close the rendezvous for the live group)."""

from __future__ import annotations

import pytest
from harness import SLOW_STEPS, Script, at_step, rounds, run_nodes, steps_in_round, write_job

from tensile.checkpoint import Catalog, DirectoryTier
from tensile.elastic.ledger import RunLedger

JOB = {"zero": {"stage": 2}, "run": {"name": "itest", "seed": 11, "steps": 18, "log_every": 6}}


def node_of_rank(cluster, rank: int) -> str:
    return next(n for n, node in cluster.nodes.items() if node.local_dir.joinpath(f"round.rank{rank}").exists())


@pytest.mark.full  # 46-60 s on 2 cores
def test_a_frozen_group_resumed_late_cannot_publish_and_the_live_group_finishes(tmp_path, dataset):
    config = write_job(tmp_path, dataset, **JOB)
    frozen: list[str] = []

    def freeze_rank_0(cluster) -> None:
        frozen.append(node_of_rank(cluster, 0))
        cluster.freeze(frozen[0])

    script = Script(
        # Step 3's background save sleeps 3 s before it writes: still in flight at step 4.
        (at_step(4, world=2), freeze_rank_0),
        (steps_in_round(4, world=1), lambda cluster: cluster.thaw(frozen[0])),
    )
    env = {**SLOW_STEPS, "TENSILE_FAULT_PERSIST_DELAY_S": "3"}
    codes = run_nodes(tmp_path, config, ["node-a", "node-b"], env=env, driver=script, timeout_s=300)
    live = next(n for n in codes if n != frozen[0])
    assert codes[live] == 0, codes
    assert codes[frozen[0]] == 0, "the resumed node re-formed and found the run done, never fenced out"
    shared = tmp_path / "shared"
    ledger = RunLedger(shared)
    assert ledger.status()["state"] == "completed" and ledger.failures_spent() == 0
    first_round_token = (shared / "rounds" / "1").read_text()
    # The frozen group's save was attempted after the live group's epoch began, and refused.
    refused = [e for e in ledger.events() if e["event"] == "checkpoint-failed" and e.get("fenced")]
    assert refused and refused[0]["step"] == 3, [e for e in ledger.events() if "checkpoint" in e["event"]]
    tier = DirectoryTier(shared)
    committed = Catalog(tier).committed()
    assert not [r for r in committed if r.group_token in first_round_token], "nothing of the frozen group's"
    assert [r["world_size"] for r in rounds(shared)][:2] == [2, 1]
    assert max(r.step for r in committed) == 18
