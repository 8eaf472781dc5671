"""The controller's config file (every problem named at start, with its path and fix), the
`tensile scaler run` command, the loop (watch events wake it; /metrics serves the gauges), the
spot prices from EC2 and the pure judgements of cluster objects."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.request

import pytest
from cluster_bench import NAMESPACE, controller_config, elastic_job, set_spend, write_checkpoints
from typer.testing import CliRunner

from tensile.cli import app
from tensile.cluster.cloud import SpotPrices
from tensile.cluster.config import load_controller_config, parse_controller_config
from tensile.cluster.controller import ScalerController
from tensile.cluster.kube import KubeApi
from tensile.cluster.observe import CheckpointPoint, InputUnknown, progress, team_spend
from tensile.config import ConfigError


def test_config_reports_every_problem_with_its_path():
    doc = controller_config("s3://bucket/runs/llm")
    doc["version"] = 2
    doc["decide_every_s"] = 0
    doc["jobs"][0].update(min_nodes=4, max_nodes=2, team="nobody", ledger="/mnt/shared/runs/llm", surprise=1,
                          scheduled="nightly")
    doc["pools"]["h100-spot"]["gpu_limit"] = 0
    doc["jobs"][0]["scaler"]["triggers"] = [{"action": "explode"}]
    doc["pools"]["h100-spot"]["capacity_type"] = "preemptible"
    with pytest.raises(ConfigError) as caught:
        parse_controller_config(doc)
    paths = {path for path, _ in caught.value.problems}
    assert {"version", "config.decide_every_s", "jobs[0].min_nodes", "jobs[0].ledger", "jobs[0].surprise",
            "jobs[0].scaler.triggers[0].action", "jobs[0].scaler.triggers[0]",
            "pools.h100-spot.capacity_type", "jobs[0].scheduled", "pools.h100-spot.gpu_limit"} <= paths
    doc = controller_config("s3://bucket/runs/llm")
    doc["jobs"][0]["team"] = "nobody"
    with pytest.raises(ConfigError, match=r"jobs\[0\].team: 'nobody' is not in teams"):
        parse_controller_config(doc)


def test_scaler_run_exits_2_naming_each_problem_of_a_bad_config(tmp_path):
    path = tmp_path / "config.json"
    doc = controller_config("s3://bucket/runs/llm")
    del doc["jobs"][0]["steps"]
    doc["metrics_port"] = 70000
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(app, ["scaler", "run", "--config", str(path)])
    assert result.exit_code == 2
    assert "jobs[0].steps" in result.output and "config.metrics_port" in result.output
    path.write_text("{not json")
    assert "is not JSON" in CliRunner().invoke(app, ["scaler", "run", "--config", str(path)]).output
    assert load_controller_config  # the CLI's loader


def test_scaler_run_once_decides_every_job_against_the_api(standin, team, cloud, tmp_path):
    set_spend(standin, time.time, 100.0)  # the command's controller runs on the wall clock
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=1, max_nodes=3))
    write_checkpoints(cloud, [(10, 8, time.time() - 200, "periodic"), (20, 8, time.time() - 100, "periodic")])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(controller_config(cloud)))
    result = CliRunner().invoke(app, ["scaler", "run", "--config", str(path), "--api-server", standin.url, "--once"])
    assert result.exit_code == 0, result.output
    assert standin.get("jobs", NAMESPACE, "llm")["spec"]["parallelism"] == 2


def test_loop_wakes_on_a_watch_event_and_serves_metrics(standin, team, clock, cloud):
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=1, max_nodes=1))
    write_checkpoints(cloud, [(10, 8, clock() - 200, "periodic"), (20, 8, clock() - 100, "periodic")])
    doc = controller_config(cloud, max_nodes=1)
    doc["decide_every_s"] = 3600  # only a watch event can bring a second pass
    controller = ScalerController(parse_controller_config(doc), KubeApi.at(standin.url), clock=clock)
    server, _ = controller.metrics.serve(0, "127.0.0.1")
    stop = threading.Event()
    loop = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    loop.start()
    try:
        passes = lambda: controller.metrics.registry.get_sample_value(  # noqa: E731
            "tensile_scaler_decisions_total", {"namespace": NAMESPACE, "job": "llm", "reason": "hold"}) or 0
        deadline = time.monotonic() + 20
        while passes() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = passes()
        assert first >= 1
        time.sleep(0.5)  # the watches are open
        workload = standin.job_workloads(NAMESPACE, "llm")[0]
        standin.put("workloads", workload)  # any change of a Workload
        while passes() <= first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert passes() > first
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
        for name in ("tensile_scaler_desired_nodes", "tensile_scaler_current_nodes", "tensile_scaler_ready_nodes",
                     "tensile_scaler_decisions_total", "tensile_scaler_decision_seconds_bucket"):
            assert name in text
        assert 'tensile_scaler_ready_nodes{job="llm",namespace="team-vision"} 1.0' in text
        assert any(r.verb == "watch" for r in standin.requests)
    finally:
        stop.set()
        server.shutdown()
        loop.join(timeout=10)


def test_spot_prices_come_from_ec2_and_an_unknown_price_is_none(cloud, clock):
    errors = []
    prices = SpotPrices("us-east-1", clock=clock, on_error=errors.append)
    assert prices.price(["p5.48xlarge"]) == pytest.approx(0.00001)  # moto's quote
    assert prices.price(["no-such.type"]) is None
    broken = SpotPrices("us-east-1", clock=clock, client=object(), on_error=errors.append)
    assert broken.price(["p5.48xlarge"]) is None and len(errors) == 1


def test_progress_measures_steps_per_s_per_size_and_the_recovery_across_a_resize():
    points = [CheckpointPoint(checkpoint_id=str(s), step=s, world_size=w, created_at=t, reason=r) for s, w, t, r in [
        (100, 8, 0.0, "periodic"), (110, 8, 100.0, "periodic"), (115, 8, 150.0, "stop"),
        (125, 16, 300.0, "periodic"), (145, 16, 400.0, "periodic")]]
    measured = progress(points, gpus_per_node=8)
    assert measured.steps_per_s_by_nodes == {1: 0.1, 2: 0.2}
    assert measured.recovery_s == pytest.approx(150 - 10 / 0.2)
    assert (measured.last_restart_at, measured.step) == (150.0, 145)


def test_team_spend_is_this_months_entry_of_the_enforcer():
    now = dt.datetime(2027, 1, 15, tzinfo=dt.timezone.utc)
    entry = lambda month: json.dumps({"month": month, "spend_usd": 12.5, "last_seen": now.isoformat()})  # noqa: E731
    assert team_spend({"vision": entry("2027-01")}, "vision", now=now) == 12.5
    for data in ({"vision": entry("2026-12")}, {}, {"vision": "{"}):
        with pytest.raises(InputUnknown):
            team_spend(data, "vision", now=now)
