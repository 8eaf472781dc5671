"""Shared set-up for the multi-process tests: tiny jobs on a local cluster of torchrun nodes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
import yaml

from tensile.checkpoint import Catalog, DirectoryTier
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster, current_world_size, last_step
from tensile.local.demo import final_weights  # noqa: F401  (re-exported for the tests)

TINY_JOB: dict[str, Any] = {
    "run": {"name": "itest", "seed": 11, "steps": 12, "log_every": 4},
    "model": {"vocab_size": 256, "seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.1,
              # Tied embedding/output (the default), two optimizer groups, and a frozen layer: what
              # resharding must get right.
              "frozen": ["position_embedding"]},
    "optimizer": {"lr": 3e-3, "warmup_steps": 2},
    "batch": {"global_batch_size": 12, "micro_batch_sizes": [1, 2, 4]},
    "zero": {"stage": 0},
    "elastic": {"min_nodes": 1, "max_nodes": 3, "collective_timeout_s": 4, "step_watchdog_s": 12,
                "startup_timeout_s": 60,
                "max_failures": 3, "keep_alive_interval_s": 1, "keep_alive_max_attempts": 3},
    "checkpoint": {"every_steps": 3, "keep_last": 3},
}


def write_job(run_dir: Path, data_url: str, **sections: dict[str, Any]) -> Path:
    """A job config under run_dir: TINY_JOB with the given sections merged in."""
    config = {key: dict(value) for key, value in TINY_JOB.items()}
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    config["data"] = {"url": data_url}
    # The ledger always lives in run_dir/shared (what the helpers read); checkpoints may go elsewhere.
    config["checkpoint"].setdefault("shared_dir", str(run_dir / "shared"))
    if "://" in config["checkpoint"]["shared_dir"]:
        config["checkpoint"].setdefault("ledger_dir", str(run_dir / "shared"))
    config["checkpoint"]["local_dir"] = str(run_dir / "local")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_nodes(run_dir: Path, config_path: Path, node_ids: list[str], *, env: dict[str, str] | None = None,
              driver: Callable[[LocalCluster, RunLedger], None] | None = None,
              timeout_s: float = 300) -> dict[str, int]:
    """Start the nodes, call driver(cluster, ledger) every poll, wait; returns exit codes."""
    ledger = RunLedger(run_dir / "shared")
    env = {"TENSILE_FAULTS_DIR": str(run_dir / "faults"), **(env or {})}
    with LocalCluster(run_dir, config_path, env=env) as cluster:
        cluster.start_store()
        for node_id in node_ids:
            cluster.start_node(node_id)
        finished = cluster.wait(timeout_s, on_poll=(lambda: driver(cluster, ledger)) if driver else None)
        if not finished:
            raise AssertionError(f"run did not finish in {timeout_s} s; logs: {run_dir / 'logs'}\n"
                                 + tail_logs(run_dir))
        return {node_id: node.process.returncode for node_id, node in cluster.nodes.items()}


def tail_logs(run_dir: Path, lines: int = 25) -> str:
    out = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def checkpoint_tensors(shared_dir: Path) -> dict[str, Any]:
    """Every tensor and number in the newest committed checkpoint, keyed by file and path."""
    tier = DirectoryTier(shared_dir)
    point = Catalog(tier).find_resume_point()
    assert point.manifest is not None, f"no committed checkpoint in {shared_dir}"
    out: dict[str, Any] = {}
    for entry in point.manifest.files:
        path = tier.checkpoint_dir(point.manifest.checkpoint_id) / entry.path
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=False)
        _flatten(state, entry.path.split("/")[-1], out)
    return out


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("ds_config", "ds_version", "mp_world_size", "dp_world_size"):
                continue  # describes the layout, not the training state
            _flatten(value, f"{prefix}.{key}", out)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _flatten(value, f"{prefix}[{i}]", out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = obj


def assert_bit_identical(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys(), f"different state: only in one: {sorted(a.keys() ^ b.keys())[:10]}"
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{key} differs (max {(a[key] - b[key]).abs().max()})"
        else:
            assert a[key] == b[key], f"{key}: {a[key]} != {b[key]}"


def step_losses(shared_dir: Path) -> dict[int, float]:
    """Loss per step; a step replayed after a restart keeps its newest value."""
    return {e["step"]: e["loss"] for e in RunLedger(shared_dir).events() if e["event"] == "step"}


def rounds(shared_dir: Path) -> list[dict[str, Any]]:
    return [e for e in RunLedger(shared_dir).events() if e["event"] == "round-start"]


class Script:
    """A driver that performs each (condition, action) once, in order."""

    def __init__(self, *steps: tuple[Callable[[list[dict]], bool], Callable[[LocalCluster], None]]):
        self.steps = list(steps)
        self.done_at: list[float] = []

    def __call__(self, cluster: LocalCluster, ledger: RunLedger) -> None:
        if not self.steps:
            return
        condition, action = self.steps[0]
        if condition(ledger.events()):
            action(cluster)
            self.done_at.append(time.time())
            self.steps.pop(0)


def at_step(step: int, world: int | None = None) -> Callable[[list[dict]], bool]:
    return lambda events: last_step(events) >= step and (world is None or current_world_size(events) == world)


def steps_in_round(count: int, world: int) -> Callable[[list[dict]], bool]:
    """True once the newest round has `world` workers and has completed `count` steps."""
    def condition(events: list[dict]) -> bool:
        starts = [e for e in events if e["event"] == "round-start"]
        if not starts or starts[-1]["world_size"] != world:
            return False
        return sum(1 for e in events if e["event"] == "step" and e["t"] > starts[-1]["t"]) >= count
    return condition


SLOW_STEPS = {"TENSILE_FAULT_STEP_DELAY_S": os.environ.get("TENSILE_TEST_STEP_DELAY_S", "0.25")}
