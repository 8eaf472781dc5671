"""The node launcher with several processes per node: torchrun counts nodes, the config and the
`--nproc-per-node` flag say how many processes each runs, and the node's outcome is read safely;
when the launcher takes the run's status for the end of the run for its node."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tensile import cli
from tensile.config import config_from_dict
from tensile.elastic import launcher
from tensile.elastic.api import NodeOutcome
from tensile.elastic.launcher import NodeSpec, read_outcome, run_is_over, torchrun_command


def _spec(tmp_path: Path, **kw) -> NodeSpec:
    return NodeSpec(config_path=tmp_path / "job.yaml", node_id="node-a", local_dir=tmp_path / "node",
                    rdzv_endpoint="127.0.0.1:29400", **kw)


def test_torchrun_command_counts_nodes_and_runs_processes_per_node(tmp_path):
    config = config_from_dict({"elastic": {"min_nodes": 2, "max_nodes": 3, "processes_per_node": 4},
                               "batch": {"global_batch_size": 12}})
    command = torchrun_command(config, _spec(tmp_path, nproc_per_node=4))
    assert "--nnodes=2:3" in command and "--nproc-per-node=4" in command


def test_torchrun_command_names_the_rendezvous_by_the_platforms_id_else_the_run(tmp_path, monkeypatch):
    """A scheduled run's Job sets TENSILE_RDZV_ID to its own name: a rendezvous of its own."""
    config = config_from_dict({"run": {"name": "demo-nightly"}})
    monkeypatch.delenv("TENSILE_RDZV_ID", raising=False)
    assert "--rdzv-id=demo-nightly" in torchrun_command(config, _spec(tmp_path))
    monkeypatch.setenv("TENSILE_RDZV_ID", "demo-nightly-29412345")
    assert "--rdzv-id=demo-nightly-29412345" in torchrun_command(config, _spec(tmp_path))


def test_read_outcome_of_a_torn_outcome_file_falls_back_to_the_ledger(tmp_path):
    config = config_from_dict({"checkpoint": {"shared_dir": str(tmp_path / "shared")}})
    spec = _spec(tmp_path)
    spec.node_dir.path.mkdir(parents=True)
    spec.node_dir.outcome_file.write_text('{"outcome": "sto')  # a writer's half-written file
    assert read_outcome(config, spec, 1) == ("torchrun exited 1", 1)
    spec.node_dir.write_outcome(NodeOutcome.STOPPED)
    assert read_outcome(config, spec, 1) == (NodeOutcome.STOPPED, 143)


@pytest.fixture
def launched(monkeypatch):
    specs: list[NodeSpec] = []

    def fake_run_node(config, spec, log_file=None):
        specs.append(spec)
        return NodeOutcome.COMPLETED, 0

    monkeypatch.setattr(launcher, "run_node", fake_run_node)
    return specs


def _launch(config: Path, *flags: str):
    return CliRunner().invoke(cli.app, ["launch", "--config", str(config), "--node-id", "n", "--local-dir",
                                        str(config.parent / "node"), "--rdzv-endpoint", "127.0.0.1:1", *flags])


def test_launch_runs_the_configs_processes_per_node_by_default(tmp_path, launched):
    config = tmp_path / "job.yaml"
    config.write_text("elastic: {min_nodes: 1, max_nodes: 2, processes_per_node: 2}\n")
    result = _launch(config)
    assert result.exit_code == 0, result.output
    assert [spec.nproc_per_node for spec in launched] == [2]


def test_launch_flag_overrides_processes_per_node_and_is_validated_as_it(tmp_path, launched):
    config = tmp_path / "job.yaml"
    config.write_text("batch: {global_batch_size: 16}\nelastic: {min_workers: 1, max_workers: 3}\n")
    assert _launch(config, "--nproc-per-node", "4").exit_code == 0
    assert [spec.nproc_per_node for spec in launched] == [4]
    # 3 nodes × 8 processes cannot share 16 samples: refused before torchrun starts, naming the field.
    result = _launch(config, "--nproc-per-node", "8")
    assert result.exit_code == 2 and "elastic.max_workers" in result.output and "world size 24" in result.output
    assert len(launched) == 1


AGENT = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_ending_a_node_ends_its_worker_processes_after_the_agent_is_gone():
    """Local rank 0 of a leaving node SIGKILLs the agent; the node's other workers are then no
    longer in the agent's tree, and must still end with the node."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True)
    other_worker = psutil.Process(int(agent.stdout.readline()))
    try:
        node = launcher.NodeProcesses(agent)
        node.refresh(now=True)
        agent.send_signal(signal.SIGKILL)  # what the leaving local rank 0 does to its agent
        deadline = time.monotonic() + 10
        while psutil.Process(agent.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)  # dead, not yet reaped: as the agent is until the launcher waits for it
        assert other_worker.pid not in {c.pid for c in psutil.Process(agent.pid).children(recursive=True)}
        node.kill()
        other_worker.wait(timeout=10)
        assert not other_worker.is_running()
    finally:
        for process in (other_worker,):
            if process.is_running():
                process.kill()
        agent.kill()
        agent.wait()


RUN_CONFIG = config_from_dict({"run": {"steps": 18, "extend_from_steps": 12}})
STARTED_AT = 1000.0


@pytest.mark.parametrize("status, over", [
    (None, False),
    ({"state": "completed", "step": 18, "t": 900.0}, True),
    # Completed at the old run.steps: this config trains it longer.
    ({"state": "completed", "step": 12, "t": 900.0}, False),
    ({"state": "completed", "t": 900.0}, True),  # a status without its step: as before
    ({"state": "failed", "reason": "failure budget spent", "t": 1001.0}, True),
    # Failed before this node started (a refused config, since fixed): starting again retries it.
    ({"state": "failed", "reason": "incompatible", "t": 999.0}, False),
])
def test_run_is_over_for_a_status(status, over):
    assert run_is_over(status, RUN_CONFIG, started_at=STARTED_AT) is over


def test_run_node_of_a_completed_run_is_a_logged_no_op_that_starts_no_torchrun(tmp_path, monkeypatch, capsys):
    """A scheduled run's next start (or a Job restarted) after the run completed exits 0 at once:
    torchrun would join a rendezvous the finished run closed."""
    from tensile.elastic.ledger import RunLedger

    config = config_from_dict({"run": {"steps": 18}, "checkpoint": {"shared_dir": str(tmp_path / "shared")}})
    RunLedger(config.checkpoint.ledger_path).write_status("completed", step=18)

    def no_torchrun(*args, **kwargs):
        raise AssertionError("torchrun started for a completed run")

    monkeypatch.setattr(launcher.subprocess, "Popen", no_torchrun)
    assert launcher.run_node(config, _spec(tmp_path)) == (NodeOutcome.COMPLETED, 0)
    assert "already completed at step 18 (run.steps 18): nothing to do" in capsys.readouterr().out
