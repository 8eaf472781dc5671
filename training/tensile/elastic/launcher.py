"""Tensile's node launcher: torchrun with settings that make recovery take seconds, and an
outcome read from the run's ledger rather than from torchrun's restart count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from tensile.config import TrainingConfig
from tensile.elastic.api import NodeDirectory, NodeOutcome, RendezvousLeaveError, rendezvous_id
from tensile.elastic.ledger import RunLedger

# torchrun's --max-restarts counts membership changes too; Tensile's ledger counts real
# failures, so torchrun's own budget is only a backstop against a worker that cannot start.
AGENT_RESTART_BACKSTOP = 1000



@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    config_path: Path
    node_id: str
    local_dir: Path
    rdzv_endpoint: str
    nproc_per_node: int = 1
    """Worker processes on this node (the config's elastic.processes_per_node, or the flag's)."""
    monitor_interval_s: float = 0.2
    """How often the agent checks its workers: a worker that exits to re-form is seen this fast."""

    @property
    def node_dir(self) -> NodeDirectory:
        return NodeDirectory(self.local_dir)


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
        # Nodes, not processes: the world size is nodes × nproc-per-node.
        f"--nnodes={elastic.min_nodes}:{elastic.max_nodes}",
        f"--nproc-per-node={spec.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={spec.rdzv_endpoint}",
        f"--rdzv-id={rendezvous_id(config.run.name)}",
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
        # For a worker that takes its leaving node out of the rendezvous (tensile.elastic.rendezvous).
        "TENSILE_RDZV_ENDPOINT": spec.rdzv_endpoint,
        "TENSILE_RDZV_LOCAL_ADDR": _local_addr(spec) or "",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_gpu() else "cuda")
    return env


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def read_outcome(config: TrainingConfig, spec: NodeSpec, torchrun_code: int) -> tuple[NodeOutcome | str, int]:
    """Why this node stopped (an outcome, or what torchrun's exit says), and the launcher's exit code."""
    outcome = NodeOutcome.parse(spec.node_dir.outcome_field())
    if outcome is not None:
        return outcome, outcome.exit_code
    status = RunLedger(config.checkpoint.ledger_path).status()
    if status and (state := NodeOutcome.parse(status["state"])) is not None:
        return state, state.exit_code
    return f"torchrun exited {torchrun_code}", torchrun_code or 1


def run_node(config: TrainingConfig, spec: NodeSpec, log_file=None) -> tuple[NodeOutcome | str, int]:
    """Run one node until the run ends for it. Stops waiting as a spare once the run is over.
    A run already completed (a scheduled run's next start, a Job restarted after the end) is a
    logged no-op that exits 0: no torchrun, so no rendezvous is joined (a finished run's is closed)."""
    node_dir = spec.node_dir
    node_dir.clear()
    ledger = RunLedger(config.checkpoint.ledger_path)
    status = ledger.status()
    if status and status["state"] == NodeOutcome.COMPLETED and run_is_over(status, config, started_at=time.time()):
        print(f"{spec.node_id}: run {config.run.name} already completed at step "
              f"{status.get('step', config.run.steps)} (run.steps {config.run.steps}): nothing to do", flush=True)
        return NodeOutcome.COMPLETED, NodeOutcome.COMPLETED.exit_code
    process = subprocess.Popen(torchrun_command(config, spec), env=worker_environment(spec),
                               stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    node_processes = NodeProcesses(process)
    stopping = []
    started_at = time.time()

    def forward_stop(signum: int, frame: object) -> None:
        # Kubernetes signals only the container's first process; torchrun forwards it to
        # the workers, which agree on a step, save and leave. The marker tells them this node
        # is going, not merely being restarted by torchrun.
        stopping.append(signum)
        node_dir.leaving_marker.touch()
        if process.poll() is None:
            process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward_stop)
    try:
        while process.poll() is None:
            # Short: the survivors' next rendezvous may wait for this node to be gone.
            time.sleep(0.1)
            node_processes.refresh()
            if node_dir.outcome_field() in (NodeOutcome.PREEMPTED, NodeOutcome.STOPPED):
                # Saved and leaving (its worker has normally ended the agent and left the
                # rendezvous already): end what is left of the node.
                node_processes.kill()
                break
            if stopping and not _has_children(process):
                # Signalled, and no worker is running to save: the agent will not start another
                # round, and its own shutdown takes seconds. End it and leave now.
                node_processes.kill()
                break
            if run_is_over(ledger.status(), config, started_at=started_at):
                # A node still waiting in rendezvous would wait out join_timeout for nothing.
                _stop(process, grace_s=15)
    except KeyboardInterrupt:
        _stop(process, grace_s=0)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if node_dir.agent_ended_marker.exists():
        # A leaving worker ended the agent; it writes the node's outcome once it has left.
        _wait_for_outcome(node_dir, timeout_s=10)
    outcome, code = read_outcome(config, spec, process.returncode)
    leaving = outcome == NodeOutcome.PREEMPTED or (stopping and outcome != NodeOutcome.COMPLETED)
    if leaving and not node_dir.outcome_field("left_rendezvous"):
        # No worker left for the node (none was running, or its leave failed): the agent is
        # dead by now, so take it out here.
        leave_rendezvous(config, spec, process.pid, ledger)
    if stopping and outcome not in (NodeOutcome.COMPLETED, NodeOutcome.PREEMPTED):
        return NodeOutcome.STOPPED, NodeOutcome.STOPPED.exit_code
    return outcome, code


def run_is_over(status: dict | None, config: TrainingConfig, *, started_at: float) -> bool:
    """The run's status says it has ended for this node: completed at (or past) this config's
    run.steps, or failed since this node started. A run completed short of run.steps is being
    trained longer; a failure recorded before the node started (an incompatible config, a
    missing dataset) is what starting it again retries."""
    if not status:
        return False
    if status["state"] == NodeOutcome.COMPLETED:
        return status.get("step", config.run.steps) >= config.run.steps
    return status["state"] == NodeOutcome.FAILED and status.get("t", started_at) >= started_at


def _wait_for_outcome(node_dir: NodeDirectory, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while node_dir.outcome_field() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def leave_rendezvous(config: TrainingConfig, spec: NodeSpec, agent_pid: int, ledger: RunLedger) -> bool:
    """Take this node's dead agent out of the rendezvous; on any failure its heartbeat still
    expires, as before, so the survivors only wait longer."""
    from tensile.elastic.rendezvous import leave_and_record  # imports torch: only when needed

    try:
        result = leave_and_record(config, ledger, endpoint=spec.rdzv_endpoint, agent_pid=agent_pid,
                                  local_addr=_local_addr(spec), node=spec.node_id, by="launcher")
    except RendezvousLeaveError as e:
        print(f"{spec.node_id}: {e}; the survivors wait for this node's heartbeat to expire",
              file=sys.stderr, flush=True)
        return False
    return bool(result.removed)


def _has_children(process: subprocess.Popen) -> bool:
    import psutil

    try:
        return bool(psutil.Process(process.pid).children())
    except psutil.NoSuchProcess:
        return False


class NodeProcesses:
    """Every process of the node's torchrun tree, remembered as it is seen. A leaving worker
    (local rank 0) kills the agent, which takes the node's other worker processes out of the
    agent's tree (they are re-parented); ending the node must end them too."""

    REFRESH_EVERY_S = 0.5

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.seen: dict[int, object] = {}
        self._refreshed_at = 0.0

    def refresh(self, *, now: bool = False) -> None:
        import psutil

        if not now and time.monotonic() - self._refreshed_at < self.REFRESH_EVERY_S:
            return
        self._refreshed_at = time.monotonic()
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def kill(self) -> None:
        """SIGKILL the agent and every process of the node seen so far (a psutil.Process knows
        its start time, so a reused pid is left alone)."""
        import psutil

        self.refresh(now=True)
        try:
            tree = [psutil.Process(self.process.pid)]
        except psutil.NoSuchProcess:
            tree = []
        for member in [*tree, *self.seen.values()]:
            try:
                if member.is_running():
                    member.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)


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
