"""Tensile's node launcher: torchrun with settings that make recovery take seconds, and an
outcome read from the run's ledger rather than from torchrun's restart count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensile import contract
from tensile.config import TrainingConfig
from tensile.ledger import RunLedger
from tensile.worker import agent_ended_marker, leaving_marker

# torchrun's --max-restarts counts membership changes too; Tensile's ledger counts real
# failures, so torchrun's own budget is only a backstop against a worker that cannot start.
AGENT_RESTART_BACKSTOP = 1000

EXIT_CODES = contract.OUTCOME_EXIT_CODES


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    config_path: Path
    node_id: str
    local_dir: Path
    rdzv_endpoint: str
    nproc_per_node: int = 1
    monitor_interval_s: float = 0.2
    """How often the agent checks its workers: a worker that exits to re-form is seen this fast."""


def torchrun_command(config: TrainingConfig, spec: NodeSpec) -> list[str]:
    elastic = config.elastic
    rdzv_conf = ",".join([
        # The default last call adds 30 s to every start.
        "last_call_timeout=1",
        f"join_timeout={int(elastic.park_timeout_s)}",
        f"keep_alive_interval={elastic.keep_alive_interval_s}",
        f"keep_alive_max_attempt={elastic.keep_alive_max_attempts}",
        # The store runs apart from every agent (on the on-demand system nodes in a cluster),
        # so losing any node never loses the rendezvous.
        "is_host=false",
    ])
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={elastic.min_workers}:{elastic.max_workers}",
        f"--nproc-per-node={spec.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={spec.rdzv_endpoint}",
        f"--rdzv-id={config.run.name}",
        f"--rdzv-conf={rdzv_conf}",
        f"--max-restarts={AGENT_RESTART_BACKSTOP}",
        f"--monitor-interval={spec.monitor_interval_s}",
        *([f"--local-addr={local_addr}"] if (local_addr := _local_addr(spec)) else []),
        "-m", "tensile.worker", "--config", str(spec.config_path),
    ]


def _local_addr(spec: NodeSpec) -> str | None:
    """The address the agent names its node by; None leaves torchrun to use the host's FQDN."""
    return "127.0.0.1" if spec.rdzv_endpoint.startswith("127.") else None


def worker_environment(spec: NodeSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # Without it gloo hung or was refused in 4 of 6 recoveries here (pytorch#135712).
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "TENSILE_LOCAL_DIR": str(spec.local_dir),
        "TENSILE_NODE_ID": spec.node_id,
        # For a worker that takes its leaving node out of the rendezvous (tensile.rdzv_leave).
        "TENSILE_RDZV_ENDPOINT": spec.rdzv_endpoint,
        "TENSILE_RDZV_LOCAL_ADDR": _local_addr(spec) or "",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_gpu() else "cuda")
    return env


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def read_outcome(config: TrainingConfig, spec: NodeSpec, torchrun_code: int) -> tuple[str, int]:
    """Why this node stopped, and the launcher's exit code."""
    node_file = spec.local_dir / "outcome.json"
    if node_file.exists():
        outcome = json.loads(node_file.read_text())["outcome"]
        if outcome in EXIT_CODES:
            return outcome, EXIT_CODES[outcome]
    status = RunLedger(config.checkpoint.ledger_path).status()
    if status and status["state"] in EXIT_CODES:
        return status["state"], EXIT_CODES[status["state"]]
    return f"torchrun exited {torchrun_code}", torchrun_code or 1


def run_node(config: TrainingConfig, spec: NodeSpec, log_file=None) -> tuple[str, int]:
    """Run one node until the run ends for it. Stops waiting as a spare once the run is over."""
    spec.local_dir.mkdir(parents=True, exist_ok=True)
    (spec.local_dir / "outcome.json").unlink(missing_ok=True)
    leaving_marker(spec.local_dir).unlink(missing_ok=True)
    agent_ended_marker(spec.local_dir).unlink(missing_ok=True)
    process = subprocess.Popen(torchrun_command(config, spec), env=worker_environment(spec),
                               stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    ledger = RunLedger(config.checkpoint.ledger_path)
    stopping = []

    def forward_stop(signum: int, frame: object) -> None:
        # Kubernetes signals only the container's first process; torchrun forwards it to
        # the workers, which agree on a step, save and leave. The marker tells them this node
        # is going, not merely being restarted by torchrun.
        stopping.append(signum)
        leaving_marker(spec.local_dir).touch()
        if process.poll() is None:
            process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward_stop)
    try:
        while process.poll() is None:
            # Short: the survivors' next rendezvous may wait for this node to be gone.
            time.sleep(0.1)
            if _node_outcome(spec) in ("preempted", "stopped"):
                # Saved and leaving (its worker has normally ended the agent and left the
                # rendezvous already): end what is left of the node.
                _kill_tree(process)
                break
            if stopping and not _has_children(process):
                # Signalled, and no worker is running to save: the agent will not start another
                # round, and its own shutdown takes seconds. End it and leave now.
                _kill_tree(process)
                break
            status = ledger.status()
            if status and status["state"] in ("completed", "failed"):
                # A node still waiting in rendezvous would wait out join_timeout for nothing.
                _stop(process, grace_s=15)
    except KeyboardInterrupt:
        _stop(process, grace_s=0)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if agent_ended_marker(spec.local_dir).exists():
        # A leaving worker ended the agent; it writes the node's outcome once it has left.
        _wait_for_outcome(spec, timeout_s=10)
    outcome, code = read_outcome(config, spec, process.returncode)
    leaving = outcome == "preempted" or (stopping and outcome != "completed")
    if leaving and not _node_outcome(spec, "left_rendezvous"):
        # No worker left for the node (none was running, or its leave failed): the agent is
        # dead by now, so take it out here.
        leave_rendezvous(config, spec, process.pid, ledger)
    if stopping and outcome not in ("completed", "preempted"):
        return "stopped", EXIT_CODES["stopped"]
    return outcome, code


def _wait_for_outcome(spec: NodeSpec, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _node_outcome(spec) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def leave_rendezvous(config: TrainingConfig, spec: NodeSpec, agent_pid: int, ledger: RunLedger) -> bool:
    """Take this node's dead agent out of the rendezvous; on any failure its heartbeat still
    expires, as before, so the survivors only wait longer."""
    from tensile.rdzv_leave import RendezvousLeaveError
    from tensile.rdzv_leave import leave_rendezvous as leave

    began = time.monotonic()
    try:
        result = leave(spec.rdzv_endpoint, config.run.name, agent_pid=agent_pid, local_addr=_local_addr(spec),
                       min_nodes=config.elastic.min_workers, max_nodes=config.elastic.max_workers)
    except RendezvousLeaveError as e:
        print(f"{spec.node_id}: {e}; the survivors wait for this node's heartbeat to expire",
              file=sys.stderr, flush=True)
        ledger.record("rendezvous-leave-failed", node=spec.node_id, by="launcher", error=str(e)[:300])
        return False
    ledger.record("rendezvous-leave", node=spec.node_id, by="launcher", removed=result.removed, round=result.round,
                  attempts=result.attempts, leave_s=round(time.monotonic() - began, 4))
    return bool(result.removed)


def _node_outcome(spec: NodeSpec, field: str = "outcome") -> Any:
    try:
        return json.loads((spec.local_dir / "outcome.json").read_text()).get(field)
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def _has_children(process: subprocess.Popen) -> bool:
    import psutil

    try:
        return bool(psutil.Process(process.pid).children())
    except psutil.NoSuchProcess:
        return False


def _kill_tree(process: subprocess.Popen) -> None:
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


def _stop(process: subprocess.Popen, *, grace_s: float) -> None:
    """Let torchrun end by itself for grace_s, then SIGTERM it, then SIGKILL it."""
    for action, wait_s in ((None, grace_s), (process.terminate, 30.0), (process.kill, 30.0)):
        if action:
            action()
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
