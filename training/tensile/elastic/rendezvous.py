"""torchrun's c10d rendezvous, Tensile's side of it: the store as its own process, and taking a
stopped node out at once so the survivors re-form without waiting for its heartbeat to expire
(keep_alive_interval × keep_alive_max_attempt).

The store must outlive every (spot) worker node: in a cluster it runs as a small pod on the
on-demand system nodes; here, one local process (`tensile rdzv-store`).

torchrun has no public way for one node to leave: a clean agent shutdown closes the rendezvous
for every node. `leave_rendezvous` does for a node whose agent is already dead what torch's own
exit op does for a live one (`_DistributedRendezvousOpExecutor._remove_from_participants`).

Relies on torch 2.13.0 internals, checked by tests/training/elastic/test_rendezvous.py:
- the state lives under the store key "torch.rendezvous.<run id>" as base64 of a pickled
  `_RendezvousState` (participants, wait_list, redundancy_list, last_heartbeats), read and
  compare-and-set through `C10dRendezvousBackend.get_state` / `set_state(state, token)`;
- a node is a `_NodeDesc(addr, pid, local_id)`: addr is the agent's --local-addr or
  `socket.getfqdn()`, pid the agent's process id;
- `_remove_participant_epilogue(state, settings)` is what torch runs after removing a
  participant (an empty complete round moves to the next round; it reads settings.min_nodes).
Every write is the backend's compare-and-set against the state just read, as torch's own
`_BackendRendezvousStateHolder.sync` does, so a concurrent change by a live agent is never
overwritten: the removal is retried on the newer state.

It imports torch: the launcher imports it only when it has to leave itself.
"""

from __future__ import annotations

import pickle
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    RendezvousSettings,
    RendezvousTimeout,
    _NodeDesc,
    _remove_participant_epilogue,
    _RendezvousState,
)
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

from tensile.elastic.api import RendezvousLeaveError, rendezvous_id
from tensile.elastic.membership import RendezvousView

if TYPE_CHECKING:
    from tensile.config import TrainingConfig
    from tensile.elastic.ledger import RunLedger

TORCH_VERSION_CHECKED = "2.13.0"


def serve(host: str, port: int, ready: threading.Event | None = None) -> None:
    """Host a multi-tenant TCPStore until SIGTERM/SIGINT."""
    store = TCPStore(host, port, is_master=True, multi_tenant=True, wait_for_workers=False,
                     timeout=timedelta(seconds=60))
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"rendezvous store listening on {host}:{store.port}", flush=True)
    if ready:
        ready.set()
    stopped.wait()


@dataclass(frozen=True, slots=True)
class LeaveResult:
    removed: list[str] = field(default_factory=list)
    """The node's entries taken out, as "<list>:<node>" (participants, wait_list, ...)."""
    round: int | None = None
    """The rendezvous round after the removal (one more than before if it emptied the round)."""
    attempts: int = 0


def agent_address(local_addr: str | None) -> str:
    """The address torchrun's agent puts in its node descriptor (`_NodeDescGenerator.generate`)."""
    return local_addr or socket.getfqdn()


def remove_agent(state: _RendezvousState, settings: RendezvousSettings, *, addr: str, pid: int) -> list[str]:
    """Take every entry of the agent (addr, pid) out of state, as torch's exit op would."""
    def ours(node: _NodeDesc) -> bool:
        return node.addr == addr and node.pid == pid

    removed = []
    for node in [n for n in state.participants if ours(n)]:
        del state.participants[node]
        removed.append(f"participants:{node}")
    for name in ("wait_list", "redundancy_list"):
        members: set[_NodeDesc] = getattr(state, name)
        for node in [n for n in members if ours(n)]:
            members.discard(node)
            removed.append(f"{name}:{node}")
    for node in [n for n in state.last_heartbeats if ours(n)]:
        del state.last_heartbeats[node]
    if any(entry.startswith("participants:") for entry in removed):
        _remove_participant_epilogue(state, settings)
    return removed


def leave_rendezvous(endpoint: str, run_id: str, *, agent_pid: int, local_addr: str | None,
                     min_nodes: int, max_nodes: int, timeout_s: float = 10.0) -> LeaveResult:
    """Remove a dead agent's node from the run's rendezvous state with compare-and-set.

    Call only once the agent process is gone: a live agent would add itself back at its next
    rendezvous."""
    settings = RendezvousSettings(run_id, min_nodes, max_nodes, RendezvousTimeout(),
                                  keep_alive_interval=timedelta(seconds=5), keep_alive_max_attempt=3)
    addr = agent_address(local_addr)
    deadline = time.monotonic() + timeout_s
    try:
        backend = _backend(endpoint, run_id, timeout_s)
        current = backend.get_state()
        attempts = 0
        while current is not None and time.monotonic() < deadline:
            attempts += 1
            state_bits, token = current[0], current[1]
            state = pickle.loads(state_bits)
            removed = remove_agent(state, settings, addr=addr, pid=agent_pid)
            if not removed:
                return LeaveResult([], state.round, attempts)
            written = backend.set_state(pickle.dumps(state), token)
            if written is None:
                break
            if written[2]:
                return LeaveResult(removed, state.round, attempts)
            current = written[:2]  # another node changed the state first: redo it on theirs
    # Store errors, and what an unpickled state of another torch's shape raises.
    except (RendezvousError, RuntimeError, OSError, ValueError, AttributeError, ImportError,
            pickle.UnpicklingError) as e:
        raise RendezvousLeaveError(f"could not leave rendezvous {run_id!r} at {endpoint}: {e}") from e
    if current is None:
        return LeaveResult([], None, 0)
    raise RendezvousLeaveError(f"rendezvous {run_id!r} changed on every attempt for {timeout_s} s")


def _backend(endpoint: str, run_id: str, timeout_s: float) -> C10dRendezvousBackend:
    host, port = parse_rendezvous_endpoint(endpoint, default_port=29400)
    store = TCPStore(host, port, is_master=False, multi_tenant=True, wait_for_workers=False,
                     timeout=timedelta(seconds=timeout_s))
    return C10dRendezvousBackend(store, run_id)


class RendezvousReader:
    """Reads the run's rendezvous state as a `RendezvousView`, over one store connection;
    None when it cannot be read (the store unreachable, a state of another torch's shape)."""

    def __init__(self, endpoint: str, run_id: str, *, timeout_s: float = 5.0):
        self.endpoint, self.run_id, self.timeout_s = endpoint, run_id, timeout_s
        self._backend: C10dRendezvousBackend | None = None

    def __call__(self) -> RendezvousView | None:
        try:
            if self._backend is None:
                self._backend = _backend(self.endpoint, self.run_id, self.timeout_s)
            current = self._backend.get_state()
            return None if current is None else RendezvousView.from_state(pickle.loads(current[0]))
        # Store errors, and what an unpickled state of another torch's shape raises.
        except (RendezvousError, RuntimeError, OSError, ValueError, AttributeError, ImportError,
                pickle.UnpicklingError):
            self._backend = None
            return None


def leave_and_record(config: TrainingConfig, ledger: RunLedger, *, endpoint: str, agent_pid: int,
                     local_addr: str | None, node: str, by: str, began: float | None = None) -> LeaveResult:
    """Take a dead agent's node out of the run's rendezvous and record it in the ledger
    (`rendezvous-leave`, or `rendezvous-leave-failed` and the error raised again).

    by names the caller ("worker" or "launcher"); began (time.monotonic()) is when the leave
    began for the caller, if before this call (the worker counts ending its agent in)."""
    began = time.monotonic() if began is None else began
    try:
        result = leave_rendezvous(endpoint, rendezvous_id(config.run.name), agent_pid=agent_pid,
                                  local_addr=local_addr,
                                  min_nodes=config.elastic.min_nodes, max_nodes=config.elastic.max_nodes)
    except RendezvousLeaveError as e:
        ledger.record("rendezvous-leave-failed", node=node, by=by, error=str(e)[:300])
        raise
    ledger.record("rendezvous-leave", node=node, by=by, removed=result.removed, round=result.round,
                  attempts=result.attempts, leave_s=round(time.monotonic() - began, 4))
    return result
