"""The worker's identity: read once from what torchrun and the launcher put in its environment."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tensile.worker import WorkerIdentity

CONFIG = SimpleNamespace(checkpoint=SimpleNamespace(local_dir="/from/config"))


def test_worker_identity_from_a_launcher_environment():
    me = WorkerIdentity.from_environment(CONFIG, {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TENSILE_LOCAL_DIR": "/nodes/b", "TENSILE_NODE_ID": "node-b",
        "TENSILE_AGENT_PID": "41", "TENSILE_RDZV_ENDPOINT": "10.0.0.9:29400", "TENSILE_RDZV_LOCAL_ADDR": "127.0.0.1",
        "GROUP_WORLD_SIZE": "2"})
    assert (me.rank, me.world_size, me.local_rank, me.node_dir.path, me.node_id, me.agent_pid, me.rdzv_endpoint,
            me.rdzv_local_addr, me.nodes) == (3, 4, 1, Path("/nodes/b"), "node-b", 41, "10.0.0.9:29400", "127.0.0.1", 2)
    assert not me.speaks_for_node, "only local rank 0 writes the node's outcome"


def test_worker_identity_counts_nodes_and_processes_per_node_as_torchrun_sets_them():
    me = WorkerIdentity.from_environment(CONFIG, {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                                  "LOCAL_WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2"})
    assert (me.world_size, me.nodes, me.processes_per_node) == (8, 2, 4)
    without_group = WorkerIdentity.from_environment(CONFIG, {"RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "3"})
    assert (without_group.nodes, without_group.processes_per_node) == (2, 3)


def test_worker_identity_defaults_outside_a_launcher():
    me = WorkerIdentity.from_environment(CONFIG, {"RANK": "0", "WORLD_SIZE": "1", "TENSILE_RDZV_LOCAL_ADDR": ""})
    assert (me.local_rank, me.node_dir.path, me.node_id, me.agent_pid, me.rdzv_endpoint, me.rdzv_local_addr) == (
        0, Path("/from/config"), "?", 0, None, None)
    assert (me.nodes, me.processes_per_node) == (1, 1)
    assert me.speaks_for_node
