"""Leaving torchrun's c10d rendezvous at once: against torch's real rendezvous code, in-process.

The first tests fail loudly if torch's internals that tensile.elastic.rendezvous relies on change shape.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import torch
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend, create_backend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    RendezvousSettings,
    RendezvousTimeout,
    _NodeDesc,
    _remove_participant_epilogue,
    _RendezvousState,
    create_handler,
)

from tensile.elastic import rendezvous
from tensile.elastic.api import RendezvousLeaveError
from tensile.elastic.ledger import RunLedger
from tensile.elastic.rendezvous import TORCH_VERSION_CHECKED, leave_and_record, leave_rendezvous, remove_agent


def test_rdzv_leave_checked_against_the_installed_torch():
    assert torch.__version__.split("+")[0] == TORCH_VERSION_CHECKED, (
        f"torch is {torch.__version__}; tensile.elastic.rendezvous was checked against {TORCH_VERSION_CHECKED}: "
        "re-read torch's dynamic_rendezvous.py and c10d_rendezvous_backend.py, then update it")


def test_rdzv_leave_torch_internals_keep_their_shape():
    assert [f.name for f in dataclasses.fields(_NodeDesc)] == ["addr", "pid", "local_id"]
    state = _RendezvousState()
    for name, kind in (("round", int), ("complete", bool), ("participants", dict), ("wait_list", set),
                       ("redundancy_list", set), ("last_heartbeats", dict)):
        assert isinstance(getattr(state, name), kind), name
    assert list(inspect.signature(_remove_participant_epilogue).parameters) == ["state", "settings"]
    assert list(inspect.signature(C10dRendezvousBackend.set_state).parameters) == ["self", "state", "token"]
    store = FakeStore()
    assert C10dRendezvousBackend(store, "run")._key == "torch.rendezvous.run"


class FakeStore:
    """The compare_set/get subset of a c10d Store that C10dRendezvousBackend uses."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def compare_set(self, key: str, expected: str, desired: str) -> bytes:
        current = self.values.get(key)
        if (current is None and expected == "") or (current is not None and current == expected.encode()):
            self.values[key] = desired.encode()
        return self.values[key]

    def get(self, key: str) -> bytes:
        return self.values[key]


def settings(min_nodes: int = 1, max_nodes: int = 3) -> RendezvousSettings:
    return RendezvousSettings("run", min_nodes, max_nodes, RendezvousTimeout(),
                              keep_alive_interval=timedelta(seconds=5), keep_alive_max_attempt=3)


def complete_state(*nodes: _NodeDesc) -> _RendezvousState:
    state = _RendezvousState()
    state.round, state.complete = 4, True
    for rank, node in enumerate(nodes):
        state.participants[node] = rank
        state.last_heartbeats[node] = datetime.now(timezone.utc)
    return state


def test_remove_agent_takes_only_its_node_even_where_pids_repeat():
    # In pods every agent may have the same pid; the address tells them apart.
    a, b = _NodeDesc("pod-a", 7, 0), _NodeDesc("pod-b", 7, 0)
    state = complete_state(a, b)
    state.wait_list.add(_NodeDesc("pod-b", 7, 1))
    removed = remove_agent(state, settings(), addr="pod-b", pid=7)
    assert sorted(removed) == ["participants:pod-b_7_0", "wait_list:pod-b_7_1"]
    assert list(state.participants) == [a] and list(state.last_heartbeats) == [a]
    assert state.complete and state.round == 4, "the others' round is untouched"


def test_remove_agent_that_empties_a_round_opens_the_next_one():
    state = complete_state(_NodeDesc("pod-b", 7, 0))
    state.wait_list.add(_NodeDesc("pod-a", 9, 0))  # the survivor, already waiting
    remove_agent(state, settings(), addr="pod-b", pid=7)
    assert not state.participants and not state.complete and state.round == 5
    assert state.wait_list == {_NodeDesc("pod-a", 9, 0)}


def test_leave_rendezvous_redoes_its_removal_on_a_concurrent_change(monkeypatch):
    store = FakeStore()
    a, b = _NodeDesc("pod-a", 9, 0), _NodeDesc("pod-b", 7, 0)
    backend = C10dRendezvousBackend(store, "run")
    backend.set_state(pickle.dumps(complete_state(a, b)))
    later = datetime.now(timezone.utc) + timedelta(seconds=1)

    class RacedBackend(C10dRendezvousBackend):
        raced = False

        def set_state(self, state, token=None):
            if not RacedBackend.raced:  # a live agent's heartbeat lands between our read and write
                RacedBackend.raced = True
                current = pickle.loads(backend.get_state()[0])
                current.last_heartbeats[a] = later
                backend.set_state(pickle.dumps(current), backend.get_state()[1])
            return super().set_state(state, token)

    monkeypatch.setattr(rendezvous, "TCPStore", lambda *args, **kwargs: store)
    monkeypatch.setattr(rendezvous, "C10dRendezvousBackend", RacedBackend)
    result = leave_rendezvous("127.0.0.1:1", "run", agent_pid=7, local_addr="pod-b", min_nodes=1, max_nodes=3)
    assert result.removed == ["participants:pod-b_7_0"] and result.attempts == 2
    final = pickle.loads(backend.get_state()[0])
    assert list(final.participants) == [a] and final.last_heartbeats[a] == later, "the rival write is kept"


def _job(name: str = "run"):
    """The two config fields a leave reads."""
    return SimpleNamespace(run=SimpleNamespace(name=name), elastic=SimpleNamespace(min_nodes=1, max_nodes=3))


def test_leave_and_record_records_the_leave_with_its_fields(monkeypatch, tmp_path):
    store = FakeStore()
    C10dRendezvousBackend(store, "run").set_state(pickle.dumps(complete_state(_NodeDesc("pod-b", 7, 0))))
    monkeypatch.setattr(rendezvous, "TCPStore", lambda *args, **kwargs: store)
    ledger = RunLedger(tmp_path / "run")
    result = leave_and_record(_job(), ledger, endpoint="127.0.0.1:1", agent_pid=7, local_addr="pod-b",
                              node="node-b", by="launcher")
    (event,) = ledger.events()
    assert {k: v for k, v in event.items() if k not in ("t", "leave_s")} == {
        "event": "rendezvous-leave", "node": "node-b", "by": "launcher", "removed": ["participants:pod-b_7_0"],
        "round": 5, "attempts": 1}
    assert result.removed == event["removed"] and event["leave_s"] >= 0


def test_leave_and_record_records_a_failed_leave_and_raises(monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(rendezvous, "TCPStore", unreachable)
    ledger = RunLedger(tmp_path / "run")
    with pytest.raises(RendezvousLeaveError, match="connection refused"):
        leave_and_record(_job(), ledger, endpoint="127.0.0.1:1", agent_pid=7, local_addr=None, node="node-a",
                         by="worker")
    (event,) = ledger.events()
    assert {k: v for k, v in event.items() if k != "t"} == {
        "event": "rendezvous-leave-failed", "node": "node-a", "by": "worker",
        "error": "could not leave rendezvous 'run' at 127.0.0.1:1: connection refused"}


# ---- against torch's DynamicRendezvousHandler over a real TCPStore ----------------------------
HEARTBEAT_EXPIRY_S = 60 * 3  # far longer than any test here: an expiry cannot be what let a round form


@pytest.fixture
def store_endpoint(monkeypatch):
    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # as Tensile's launcher sets it
    store = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False)
    yield f"127.0.0.1:{store.port}"
    del store


def handler(endpoint: str, node: str, *, join_timeout: int):
    params = RendezvousParameters(backend="c10d", endpoint=endpoint, run_id="leave-test", min_nodes=1,
                                  max_nodes=2, local_addr=node, is_host="false", last_call_timeout=1,
                                  join_timeout=join_timeout, keep_alive_interval=60, keep_alive_max_attempt=3)
    backend, store = create_backend(params)
    return create_handler(store, backend, params)


def form_group_of_two(endpoint: str, *, join_timeout: int):
    a, b = handler(endpoint, "node-a", join_timeout=join_timeout), handler(endpoint, "node-b", join_timeout=join_timeout)
    joined = {}
    threads = [threading.Thread(target=lambda h=h, n=n: joined.update({n: h.next_rendezvous()}))
               for n, h in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {n: info.world_size for n, info in joined.items()} == {"a": 2, "b": 2}
    b._stop_heartbeats()  # node-b's agent is gone (its launcher killed it)
    return a


def test_survivor_reforms_at_once_after_leave_rendezvous(store_endpoint):
    survivor = form_group_of_two(store_endpoint, join_timeout=20)
    result = leave_rendezvous(store_endpoint, "leave-test", agent_pid=os.getpid(), local_addr="node-b",
                              min_nodes=1, max_nodes=2)
    assert [entry.split(":")[0] for entry in result.removed] == ["participants"]
    # The join timeout (20 s) is far shorter than node-b's heartbeat expiry: this round can
    # only form because node-b is gone from the state.
    info = survivor.next_rendezvous()
    assert info.world_size == 1 and info.rank == 0


def test_without_leave_the_survivor_waits_for_the_heartbeat(store_endpoint):
    survivor = form_group_of_two(store_endpoint, join_timeout=2)
    with pytest.raises(RendezvousTimeoutError):
        survivor.next_rendezvous()  # node-b is still a participant until its heartbeat expires


def test_rendezvous_reader_sees_a_formed_rounds_members_and_heartbeats(store_endpoint):
    from tensile.elastic.membership import node_name
    from tensile.elastic.rendezvous import RendezvousReader

    form_group_of_two(store_endpoint, join_timeout=20)
    seen = RendezvousReader(store_endpoint, "leave-test")()
    members = {node_name(addr, os.getpid()) for addr in ("node-a", "node-b")}
    assert seen is not None and seen.participants == members and not seen.waiting
    assert set(seen.heartbeats) == members
    assert RendezvousReader("127.0.0.1:1", "leave-test", timeout_s=1)() is None, "unreachable: None, not an error"
