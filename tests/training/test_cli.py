import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tensile import cli

GOOD = """\
run: {name: cli-test, steps: 10}
batch: {global_batch_size: 12, micro_batch_sizes: [1, 2, 4]}
elastic: {min_nodes: 2, max_nodes: 5}
"""

LEGACY = """\
run: {name: cli-test, steps: 10}
batch: {global_batch_size: 12, micro_batch_sizes: [1, 2, 4]}
elastic: {min_workers: 2, max_workers: 5}
"""

GPU_NODES = """\
run: {name: cli-test, steps: 10}
batch: {global_batch_size: 16, micro_batch_sizes: [1, 2, 4, 8]}
elastic: {min_nodes: 1, max_nodes: 4, processes_per_node: 8}
"""

BAD = """\
batch: {global_batchsize: 16, global_batch_size: -4}
zero: {stage: 5}
elastic: {min_workers: 3, max_workers: 2}
checkpoint: {keep_last: 1}
"""


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    # Rich wraps at the terminal width (80 under a test runner), splitting table cells across lines.
    monkeypatch.setattr(cli, "console", Console(width=200))
    monkeypatch.setattr(cli, "errors", Console(width=200, stderr=True))


def _invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _row(output: str, nodes: int) -> str:
    (line,) = [line for line in output.splitlines() if re.match(rf"│ {nodes}\s+│", line)]
    return line


def test_cli_validate_accepts_a_good_config(tmp_path):
    result = _invoke("validate", _config(tmp_path, GOOD))

    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "cli-test" in result.output
    assert "2..5 node(s) × 1 process(es) = world size 2..5" in result.output
    assert "note" not in result.output


def test_cli_validate_reads_the_old_worker_keys_as_nodes_with_a_note(tmp_path):
    result = _invoke("validate", _config(tmp_path, LEGACY))

    assert result.exit_code == 0, result.output
    assert "2..5 node(s)" in result.output
    assert "elastic.min_workers is deprecated" in result.output and "rename it to max_nodes" in result.output


def test_cli_validate_refuses_more_processes_than_samples_naming_the_field_and_fix(tmp_path):
    """16 samples over 4 nodes × 8 GPUs: the trainer's batch plan refuses world size 32, so
    validation must too (it passed before, and every round then failed at start)."""
    result = _invoke("validate", _config(tmp_path, GPU_NODES))

    assert result.exit_code == 2
    assert "elastic.max_nodes:" in result.output and "world size 32" in result.output
    assert "lower elastic.max_nodes to 2" in result.output


def test_cli_validate_names_every_bad_field_without_a_traceback(tmp_path):
    result = _invoke("validate", _config(tmp_path, BAD))

    assert result.exit_code == 2
    for path in ("batch.global_batchsize", "batch.global_batch_size", "zero.stage",
                 "elastic.max_workers", "checkpoint.keep_last"):
        assert f"{path}:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("target", ["missing.yaml", "."], ids=["missing file", "directory"])
def test_cli_validate_unreadable_config_exits_2_without_a_traceback(tmp_path, target):
    result = _invoke("validate", tmp_path / target)

    assert result.exit_code == 2
    assert "config error" in result.output
    assert "Traceback" not in result.output


def test_cli_plan_lists_every_node_count_as_valid(tmp_path):
    result = _invoke("plan", _config(tmp_path, GOOD))

    assert result.exit_code == 0, result.output
    rows = re.findall(r"^│ (\d+)\s+│ (\d+)\s+│.*│ (\S+)\s+│$", result.output, flags=re.MULTILINE)
    assert rows == [(str(nodes), str(nodes), "valid") for nodes in range(2, 6)]


def test_cli_plan_shows_the_world_size_and_split_per_node_count(tmp_path):
    config = _config(tmp_path, GPU_NODES.replace("max_nodes: 4", "max_nodes: 2"))
    result = _invoke("plan", config)

    assert result.exit_code == 0, result.output
    assert "8 process(es) per node" in result.output
    # 2 nodes × 8 processes share 16 samples: one each, micro-batch 1, one step, nothing padded.
    assert [c.strip() for c in _row(result.output, 2).strip("│ ").split("│")] == ["2", "16", "1", "1", "1", "0", "valid"]
    assert [c.strip() for c in _row(result.output, 1).strip("│ ").split("│")] == ["1", "8", "2", "1", "2", "0", "valid"]


def test_cli_plan_shows_the_split_for_an_uneven_count(tmp_path):
    result = _invoke("plan", _config(tmp_path, GOOD), "--nodes", 5)

    # 12 over 5: shares 3,3,2,2,2; micro-batch 1 × 3 steps pads least: 5×3 − 12 = 3 padded.
    cells = [c.strip() for c in _row(result.output, 5).strip("│ ").split("│")]
    assert cells == ["5", "5", "1", "3", "2,3", "3", "valid"]


def test_cli_plan_still_takes_the_old_workers_flag(tmp_path):
    result = _invoke("plan", _config(tmp_path, LEGACY), "--workers", 5)

    assert result.exit_code == 0, result.output
    assert [c.strip() for c in _row(result.output, 5).strip("│ ").split("│")][-1] == "valid"


def test_cli_plan_below_min_nodes_parks(tmp_path):
    result = _invoke("plan", _config(tmp_path, GOOD), "--nodes", 1)

    assert result.exit_code == 0, result.output
    assert "parks: waits for 1 more node(s)" in _row(result.output, 1)


def test_cli_plan_above_max_nodes_spares_wait(tmp_path):
    result = _invoke("plan", _config(tmp_path, GOOD), "--nodes", 7)

    assert result.exit_code == 0, result.output
    assert "2 node(s) wait as spares" in _row(result.output, 7)


def test_cli_plan_bad_config_exits_2(tmp_path):
    result = _invoke("plan", _config(tmp_path, BAD))

    assert result.exit_code == 2
    assert "zero.stage" in result.output
    assert "Traceback" not in result.output


def _market_result(**changes):
    from tensile.local.demo import EventReport, RunSummary

    summary = RunSummary(steps_done=200, timeline=[(1, 1, 0), (2, 2, 11), (3, 3, 28), (4, 1, 33), (5, 1, 38)],
                         restarts=4, failures_spent=0, events=[
                             EventReport("grow -> 2", "", 5, 11, 0, 26.0, 2),
                             EventReport("reclaimed", "node-0", 37, 38, 0, 36.3, 1)])
    result = {"summary": summary, "status": {"state": "completed"}, "decisions": [], "failures_spent": 0,
              "exit_codes": {"node-0": 143, "node-1": 0}, "max_weight_diff": 3.7e-7,
              "max_weight_diff_in": "blocks.0.attention.qkv_projection.weight", "weight_rel_l2": 1.8e-4,
              "max_loss_diff": 3.6e-7, "weight_tolerance": 1e-5, "scenario_s": 254.0, "total_s": 308.0,
              "run_dir": Path("runs/demo-market")}
    result.update(changes)
    return result


@pytest.mark.parametrize(("changes", "code"), [
    ({}, 0),
    ({"max_weight_diff": 2e-5}, 1),  # beyond the tolerance
    ({"status": {"state": "stopped"}}, 1),
])
def test_cli_demo_market_scenario_prints_the_story_and_fails_beyond_the_weight_tolerance(monkeypatch, changes, code):
    from tensile.local import scenario

    runs = []
    monkeypatch.setattr(scenario, "run_market_scenario", lambda run_dir, **_: runs.append(run_dir) or _market_result(**changes))
    result = CliRunner().invoke(cli.app, ["demo", "--scenario", "market"])
    assert result.exit_code == code, result.output
    assert runs == [Path("runs/demo-market").resolve()]
    assert "1 (from step 0) → 2 (from step 11) → 3 (from step 28)" in result.output
    assert "reclaimed" in result.output and "node-0" in result.output
    assert "final weights vs the undisturbed run: max absolute difference" in result.output and "tolerance 1e-05" in result.output


def test_cli_demo_market_scenario_fails_when_a_stop_lost_steps(monkeypatch):
    from tensile.local import scenario
    from tensile.local.demo import EventReport

    lossy = _market_result()
    lossy["summary"].events.append(EventReport("shrink-trigger -> 1", "", 32, 30, 2, 17.5, 1))
    monkeypatch.setattr(scenario, "run_market_scenario", lambda run_dir, **_: lossy)
    assert CliRunner().invoke(cli.app, ["demo", "--scenario", "market"]).exit_code == 1


def test_cli_demo_refuses_an_unknown_scenario():
    result = CliRunner().invoke(cli.app, ["demo", "--scenario", "weather"])
    assert result.exit_code == 2 and "weather" in result.output
