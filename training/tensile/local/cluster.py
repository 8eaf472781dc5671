"""Several torchrun "nodes" on this host, for the demo, the tests and the benchmarks.

Each node is a `tensile launch` process in its own session (so it can be frozen or killed as a
whole, like a reclaimed instance) with its own local directory; the rendezvous store is a
separate process, as it is a separate pod in a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    node_id: str
    process: subprocess.Popen
    local_dir: Path
    log_path: Path
    started_at: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    def __init__(self, run_dir: Path, config_path: Path, *, env: dict[str, str] | None = None,
                 rdzv_port: int | None = None):
        self.run_dir = run_dir
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.rdzv_port = rdzv_port or free_port()
        self.nodes: dict[str, Node] = {}
        self.store: subprocess.Popen | None = None
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.rdzv_port}"

    def start_store(self) -> None:
        log = open(self.run_dir / "logs" / "rdzv-store.log", "wb")
        self.store = subprocess.Popen(
            [sys.executable, "-m", "tensile.cli", "rdzv-store", "--port", str(self.rdzv_port)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        # No wait for it to listen: the agents' store clients retry until it does, and the
        # store's own start (a torch import) overlaps theirs.

    def start_node(self, node_id: str, *, extra_env: dict[str, str] | None = None,
                   nproc_per_node: int | None = None) -> Node:
        """A node of nproc_per_node worker processes (default: the config's elastic.processes_per_node),
        all sharing its local directory, as a pod's GPUs share the pod."""
        local_dir = self.run_dir / "nodes" / node_id
        log_path = self.run_dir / "logs" / f"{node_id}.log"
        log = open(log_path, "ab")
        processes = [] if nproc_per_node is None else ["--nproc-per-node", str(nproc_per_node)]
        process = subprocess.Popen(
            [sys.executable, "-m", "tensile.cli", "launch", "--config", str(self.config_path),
             "--node-id", node_id, "--local-dir", str(local_dir), "--rdzv-endpoint", self.endpoint, *processes],
            stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(extra_env or {})},
            start_new_session=True)
        node = Node(node_id, process, local_dir, log_path)
        self.nodes[node_id] = node
        return node

    def _signal_node(self, node_id: str, sig: signal.Signals) -> None:
        """Signal every process of a node: torchrun starts its workers in sessions of their
        own, so the launcher's process group alone would miss them."""
        launcher = self.nodes[node_id].process.pid
        try:
            processes = [psutil.Process(launcher), *psutil.Process(launcher).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        if sig == signal.SIGSTOP:
            processes.reverse()  # workers first, so none sees its agent stop before it does
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def freeze(self, node_id: str) -> None:
        """The instance stops answering: every process of the node is stopped, sockets stay open."""
        self._signal_node(node_id, signal.SIGSTOP)

    def thaw(self, node_id: str) -> None:
        """A frozen instance answers again (SIGCONT), its processes where they stopped."""
        self._signal_node(node_id, signal.SIGCONT)

    def kill(self, node_id: str, *, delete_local_dir: bool = True) -> None:
        """The instance is gone: processes killed, its disk with it."""
        node = self.nodes[node_id]
        self._signal_node(node_id, signal.SIGKILL)
        node.process.wait(timeout=30)
        if delete_local_dir:
            shutil.rmtree(node.local_dir, ignore_errors=True)

    def terminate(self, node_id: str) -> None:
        """A graceful stop (pod deletion): SIGTERM to the node's launcher and torchrun agent,
        which forwards it to its workers. A node already gone has nothing left to stop."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[node_id].process.pid, signal.SIGTERM)

    def is_running(self, node_id: str) -> bool:
        return self.nodes[node_id].running

    def wait(self, timeout_s: float, *, on_poll: Callable[[], None] | None = None,
             poll_s: float = 0.2) -> bool:
        """Wait for every node to exit; True if they did within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if on_poll:
                on_poll()
            if not any(n.running for n in self.nodes.values()):
                return True
            time.sleep(poll_s)
        return False

    def shutdown(self) -> None:
        for node_id, node in self.nodes.items():
            if node.running:
                self.kill(node_id, delete_local_dir=False)
        if self.store and self.store.poll() is None:
            os.killpg(self.store.pid, signal.SIGKILL)
            self.store.wait(timeout=10)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def last_step(events: list[dict[str, Any]]) -> int:
    steps = [e["step"] for e in events if e["event"] == "step"]
    return max(steps, default=0)


def current_world_size(events: list[dict[str, Any]]) -> int | None:
    rounds = [e for e in events if e["event"] == "round-start"]
    return rounds[-1]["world_size"] if rounds else None
