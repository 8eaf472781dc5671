"""Checkpoints on S3 (a loopback moto server): saved in the background from each node's disk,
published by a conditional write, resumed by a node that has nothing but S3."""

from __future__ import annotations

import shutil

from harness import SLOW_STEPS, Script, at_step, final_weights, rounds, run_nodes, step_losses, write_job

from tensile.checkpoint import Catalog, open_tier
from tensile.checkpoint.tools import consolidated_weights, list_checkpoints
from tensile.elastic.ledger import RunLedger


def test_a_replacement_node_resumes_from_s3_alone_and_keeps_the_trajectory(tmp_path, dataset, fixed_size_runs,
                                                                            moto_url, bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)  # this process and the nodes it starts
    url = f"s3://{bucket}/teams/t/runs/itest"
    config = write_job(tmp_path, dataset, zero={"stage": 2}, checkpoint={"shared_dir": url})
    everyone = lambda cluster: [cluster.terminate(n) for n in list(cluster.nodes)]  # noqa: E731
    codes = run_nodes(tmp_path, config, ["a", "b"], env=SLOW_STEPS, driver=Script((at_step(5), everyone)))
    assert codes == {"a": 143, "b": 143}
    # The nodes are gone with their disks; a node elsewhere has only S3 (and the run's ledger).
    shutil.rmtree(tmp_path / "nodes")  # each node's local_dir
    assert run_nodes(tmp_path, config, ["c"]) == {"c": 0}

    ledger_dir = tmp_path / "shared"
    assert not (ledger_dir / "checkpoints").exists(), "no checkpoint went anywhere but S3"
    starts = rounds(ledger_dir)
    assert [r["world_size"] for r in starts] == [2, 1]
    events = RunLedger(ledger_dir).events()
    done_before = max(e["step"] for e in events if e["event"] == "step" and e["t"] < starts[1]["t"])
    assert starts[1]["resumed_step"] == done_before, "zero steps lost"
    losses, expected = step_losses(ledger_dir), step_losses(fixed_size_runs[0]["uninterrupted"] / "shared")
    assert max(abs(losses[s] - expected[s]) / expected[s] for s in expected) <= 1e-5
    # Every commit on S3 is readable and valid; export reads the weights back from S3.
    tier = open_tier(url)
    assert [r.step for r in Catalog(tier).committed()][-1] == 12
    rows = list_checkpoints(url, verify=True)
    assert all(row.problem in (None, "deleted by retention") for row in rows), rows
    weights = consolidated_weights(tier, Catalog(tier).find_resume_point().manifest)
    reference = final_weights(fixed_size_runs[0]["uninterrupted"] / "shared")
    assert max((weights[k] - reference[k]).abs().max().item() for k in reference) <= 1e-5
