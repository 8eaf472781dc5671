"""Spot notices through a loopback IMDSv2 server: rebalance → checkpoint and go on;
interruption → agreed stop, checkpoint, the node leaves, the rest resume with no step lost."""

from __future__ import annotations

import pytest
from harness import SLOW_STEPS, Script, at_step, rounds, run_nodes, write_job

from tensile.elastic.imds import INSTANCE_ACTION_PATH, MetadataClient, SpotNoticeWatcher
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster
from tensile.local.metadata_server import MetadataServer


def test_metadata_client_uses_a_token_and_renews_it():
    with MetadataServer() as server:
        client = MetadataClient(server.endpoint)
        assert client.get_json(INSTANCE_ACTION_PATH) is None  # 404: nothing to report
        server.interrupt()
        assert client.get_json(INSTANCE_ACTION_PATH)["action"] == "terminate"
        server.expire_tokens()
        assert client.get_json(INSTANCE_ACTION_PATH)["action"] == "terminate"  # 401 → new token
        assert all(authorised for _, _, authorised in server.requests[-1:])


def test_watcher_reports_each_notice_once():
    seen = []
    with MetadataServer() as server:
        watcher = SpotNoticeWatcher(server.endpoint, poll_s=0.01, on_interruption=lambda n: seen.append("stop"),
                                    on_rebalance=lambda n: seen.append("rebalance"))
        watcher.poll_once()
        server.rebalance()
        watcher.poll_once()
        watcher.poll_once()
        server.interrupt()
        watcher.poll_once()
        watcher.poll_once()
        server.rebalance("2026-11-28T12:05:00Z")  # a new recommendation
        watcher.poll_once()
    assert seen == ["rebalance", "stop", "rebalance"]


def test_rebalance_then_interruption_loses_no_step(tmp_path, dataset):
    job = {"run": {"name": "itest", "seed": 11, "steps": 24, "log_every": 6},
           "checkpoint": {"every_steps": 100}, "signals": {"imds_enabled": True, "imds_poll_s": 0.1}}
    config = write_job(tmp_path, dataset, **job)
    ledger = RunLedger(tmp_path / "shared")
    with MetadataServer() as doomed, MetadataServer() as quiet, LocalCluster(tmp_path, config, env=SLOW_STEPS) as cluster:
        script = Script((at_step(4, world=2), lambda cluster: doomed.rebalance()),
                        (at_step(10, world=2), lambda cluster: doomed.interrupt()))
        cluster.start_store()
        # Each node reads its own metadata service, as on EC2.
        cluster.start_node("node-a", extra_env={"TENSILE_IMDS_ENDPOINT": quiet.endpoint})
        cluster.start_node("node-b", extra_env={"TENSILE_IMDS_ENDPOINT": doomed.endpoint})
        assert cluster.wait(300, on_poll=lambda: script(cluster, ledger))
        codes = {n: node.process.returncode for n, node in cluster.nodes.items()}
    assert codes == {"node-a": 0, "node-b": 143}, codes
    events = ledger.events()
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    reasons = [e["reason"] for e in checkpoints]
    assert "rebalance" in reasons and "stop" in reasons, reasons
    rebalance_step = next(e["step"] for e in checkpoints if e["reason"] == "rebalance")
    stop_step = next(e["step"] for e in checkpoints if e["reason"] == "stop")
    starts = rounds(tmp_path / "shared")
    assert [r["world_size"] for r in starts] == [2, 1]
    # Training went on at 2 workers after the rebalance checkpoint ...
    assert any(e["event"] == "step" and e["step"] > rebalance_step and e["world_size"] == 2 for e in events)
    # ... and the survivor resumed exactly where the noticed stop saved: zero steps lost.
    done_before = max(e["step"] for e in events if e["event"] == "step" and e["t"] < starts[1]["t"])
    assert starts[1]["resumed_step"] == stop_step == done_before
    assert ledger.failures_spent() == 0 and ledger.status()["state"] == "completed"


def test_metrics_endpoint_serves_the_trainers_figures(tmp_path, dataset):
    import re
    import urllib.request

    from tensile.local.cluster import free_port

    port = free_port()
    config = write_job(tmp_path, dataset, run={"name": "itest", "seed": 11, "steps": 12, "log_every": 6,
                                               "metrics_port": port})
    scraped: list[str] = []

    def scrape(cluster, ledger):
        if scraped:
            return
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
        except OSError:
            return
        durable = re.search(r'tensile_last_durable_step\{run="itest"\} ([0-9.]+)', text)
        if durable and float(durable.group(1)) > 0:  # mid-run, after a checkpoint
            scraped.append(text)

    assert run_nodes(tmp_path, config, ["node-a"], env=SLOW_STEPS, driver=scrape) == {"node-a": 0}
    assert scraped, "the endpoint answered while the run was going"
    for name in ("tensile_step_seconds", "tensile_samples_per_second", "tensile_world_size", "tensile_restarts",
                 "tensile_preemptions", "tensile_checkpoint_stall_seconds", "tensile_checkpoint_persist_seconds",
                 "tensile_steps_lost"):
        assert name in scraped[0], name


@pytest.mark.full
def test_two_of_three_noticed_at_once_lose_no_step(tmp_path, dataset):
    job = {"run": {"name": "itest", "seed": 11, "steps": 16, "log_every": 4},
           "checkpoint": {"every_steps": 100}, "signals": {"imds_enabled": True, "imds_poll_s": 0.1}}
    config = write_job(tmp_path, dataset, zero={"stage": 2}, **job)
    ledger = RunLedger(tmp_path / "shared")
    with MetadataServer() as quiet, MetadataServer() as doomed_b, MetadataServer() as doomed_c, \
            LocalCluster(tmp_path, config, env=SLOW_STEPS) as cluster:
        script = Script((at_step(4, world=3), lambda cluster: (doomed_b.interrupt(), doomed_c.interrupt())))
        cluster.start_store()
        for node, server in (("node-a", quiet), ("node-b", doomed_b), ("node-c", doomed_c)):
            cluster.start_node(node, extra_env={"TENSILE_IMDS_ENDPOINT": server.endpoint})
        assert cluster.wait(300, on_poll=lambda: script(cluster, ledger))
        codes = {n: node.process.returncode for n, node in cluster.nodes.items()}
    assert codes == {"node-a": 0, "node-b": 143, "node-c": 143}, codes
    events = ledger.events()
    stops = [e for e in events if e["event"] == "checkpoint" and e["reason"] == "stop"]
    starts = rounds(tmp_path / "shared")
    assert [r["world_size"] for r in starts[:1]] == [3] and starts[-1]["world_size"] == 1, starts
    # One agreed stop for both notices; the survivor resumed at it, resharding ZeRO-2 3 → 1.
    assert len(stops) == 1
    done_before = max(e["step"] for e in events if e["event"] == "step" and e["t"] < starts[-1]["t"])
    assert starts[-1]["resumed_step"] == stops[0]["step"] == done_before
    assert ledger.failures_spent() == 0 and ledger.status()["state"] == "completed"
