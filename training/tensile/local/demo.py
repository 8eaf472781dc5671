"""`tensile demo`: an elastic job on this host that loses a node the way a reclaimed spot
instance goes, continues smaller, gains a node back, and is compared with an uninterrupted run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

from tensile.config import TrainingConfig, dump_config, load_config
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster, current_world_size, last_step
from tensile.report import write_report


@dataclass(frozen=True, slots=True)
class Disruption:
    kind: str
    """node-lost or node-added."""
    node: str
    at: float
    at_step: int


@dataclass(slots=True)
class EventReport:
    kind: str
    node: str
    at_step: int
    resumed_step: int | None = None
    steps_lost: int | None = None
    recovery_s: float | None = None
    new_world_size: int | None = None


@dataclass(slots=True)
class RunSummary:
    steps_done: int
    timeline: list[tuple[int, int, int]]
    """(round, world size, resumed step) per round."""
    restarts: int
    failures_spent: int
    events: list[EventReport] = field(default_factory=list)
    final_loss: float | None = None
    losses: dict[int, float] = field(default_factory=dict)


def summarize(events: list[dict[str, Any]], disruptions: list[Disruption]) -> RunSummary:
    """Pure: the run's story from its ledger events and the disruptions the driver caused."""
    rounds = [e for e in events if e["event"] == "round-start"]
    steps = [e for e in events if e["event"] == "step"]
    losses = {e["step"]: e["loss"] for e in steps}  # a replayed step keeps its newest loss
    summary = RunSummary(
        steps_done=max(losses, default=0),
        timeline=[(r["round"], r["world_size"], r["resumed_step"]) for r in rounds],
        restarts=max(0, len(rounds) - 1),
        failures_spent=sum(1 for e in events if e["event"] == "failure"),
        final_loss=losses[max(losses)] if losses else None, losses=losses)
    for d in disruptions:
        report = EventReport(d.kind, d.node, d.at_step)
        following = [r for r in rounds if r["t"] > d.at]
        if following:
            nxt = following[0]
            done_before = max((e["step"] for e in steps if e["t"] <= nxt["t"]), default=0)
            report.resumed_step = nxt["resumed_step"]
            report.steps_lost = done_before - nxt["resumed_step"]
            report.new_world_size = nxt["world_size"]
            first_step = next((e for e in steps if e["t"] > nxt["t"]), None)
            if first_step:
                report.recovery_s = first_step["t"] - d.at
        summary.events.append(report)
    return summary


def final_weights(shared_dir: Path) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of the checkpoint a restart would resume from."""
    from tensile.checkpoint import DirectoryTier
    from tensile.checkpoint.tools import consolidated_weights, resolve

    tier = DirectoryTier(shared_dir)
    return consolidated_weights(tier, resolve(tier, None))


def weight_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """(relative L2 difference over all weights, max absolute difference, the weight it is in)."""
    diffs = {k: (a[k].float() - b[k].float()).flatten() for k in a}
    worst = {k: d.abs().max().item() for k, d in diffs.items() if d.numel()}
    where = max(worst, key=worst.get, default="")
    norm = torch.cat([b[k].float().flatten() for k in a]).norm()
    return (torch.cat(list(diffs.values())).norm() / norm).item(), worst.get(where, 0.0), where


def prepare_run(run_dir: Path, config_name: str = "demo.yaml") -> tuple[Path, TrainingConfig]:
    """Copy the packaged config into the run directory and generate its data."""
    run_dir.mkdir(parents=True, exist_ok=True)
    source = resources.files("tensile.configs").joinpath(config_name)
    config_path = run_dir / "config.yaml"
    config_path.write_text(source.read_text())
    config = load_config(config_path)
    ensure_data(config)
    return config_path, config


def ensure_data(config: TrainingConfig) -> None:
    from tensile.data import DatasetNotFoundError, TokenDataset, generate_corpus

    try:
        TokenDataset(config.data.url)
    except DatasetNotFoundError:
        if config.data.generate is None:
            raise
        generate_corpus(config.data.url, num_samples=config.data.generate.num_samples,
                        seq_len=config.model.seq_len, seed=config.data.generate.seed,
                        held_out_samples=config.data.generate.held_out_samples)


def reference_config(config_path: Path, config: TrainingConfig, run_dir: Path) -> Path:
    """The same job with its own shared tier, for an uninterrupted single-node run."""
    reference = load_config(config_path)
    reference.checkpoint.shared_dir = str(run_dir / "reference" / "shared")
    reference.data.url = config.data.url
    path = run_dir / "reference" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(reference, path)
    return path


def run_demo(run_dir: Path, *, lose_at_step: int = 40, add_at_step: int = 80,
             progress: Callable[[str], None] = print, timeout_s: float = 600,
             with_reference: bool = True) -> dict[str, Any]:
    """The elastic run, then (unless `with_reference` is off: the simulator's validation needs only
    the elastic run's ledger) the uninterrupted reference and the comparison."""
    started = time.time()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config_path, config = prepare_run(run_dir)
    ledger = RunLedger(config.checkpoint.ledger_path)
    disruptions: list[Disruption] = []
    with LocalCluster(run_dir, config_path) as cluster:
        cluster.start_store()
        for node_id in ("node-a", "node-b"):
            cluster.start_node(node_id)
        progress(f"started node-a and node-b; rendezvous at {cluster.endpoint}")
        state = {"frozen_at": None, "killed": False, "added": False}

        def drive() -> None:
            events = ledger.events()
            step, world = last_step(events), current_world_size(events)
            if state["frozen_at"] is None and step >= lose_at_step and world == 2:
                cluster.freeze("node-b")
                state["frozen_at"] = time.time()
                disruptions.append(Disruption("node-lost", "node-b", state["frozen_at"], step))
                progress(f"step {step}: node-b frozen (SIGSTOP on its process group): a silent vanish")
            elif state["frozen_at"] and not state["killed"] and world == 1:
                cluster.kill("node-b", delete_local_dir=True)
                state["killed"] = True
                progress(f"step {step}: survivors re-formed at 1 worker; node-b killed, its disk deleted")
            elif state["killed"] and not state["added"] and step >= add_at_step:
                cluster.start_node("node-c")
                state["added"] = True
                disruptions.append(Disruption("node-added", "node-c", time.time(), step))
                progress(f"step {step}: node-c joins")

        if not cluster.wait(timeout_s, on_poll=drive):
            raise TimeoutError(f"the demo did not finish in {timeout_s} s; logs in {run_dir / 'logs'}")
        elastic_s = time.time() - started
        if not with_reference:
            return {"summary": summarize(ledger.events(), disruptions), "status": ledger.status(),
                    "disruptions": disruptions, "elastic_s": elastic_s, "run_dir": run_dir}
        progress(f"elastic run finished in {elastic_s:.0f} s; now the uninterrupted reference run")
        reference_shared = run_reference(config_path, config, run_dir, timeout_s)
    summary = summarize(ledger.events(), disruptions)
    report = write_report(str(run_dir), reference=str(reference_shared.parent))
    return {
        "report": report,
        "summary": summary, "status": ledger.status(),
        **against_reference(summary, Path(config.checkpoint.shared_dir), reference_shared),
        "elastic_s": elastic_s, "total_s": time.time() - started, "run_dir": run_dir, "disruptions": disruptions,
    }


def run_reference(config_path: Path, config: TrainingConfig, run_dir: Path, timeout_s: float) -> Path:
    """The same job uninterrupted on one node (no fault hooks armed); returns its shared tier."""
    reference_path = reference_config(config_path, config, run_dir)
    reference = LocalCluster(run_dir / "reference", reference_path, rdzv_port=None)
    with reference:
        reference.start_store()
        reference.start_node("ref-node")
        if not reference.wait(timeout_s):
            raise TimeoutError(f"the reference run did not finish in {timeout_s} s; logs in {run_dir / 'reference'}")
    return run_dir / "reference" / "shared"


def against_reference(summary: RunSummary, shared_dir: Path, reference_shared: Path) -> dict[str, Any]:
    """The run's final weights and per-step losses beside the reference run's."""
    reference_summary = summarize(RunLedger(reference_shared).events(), [])
    weights, reference_weights = final_weights(shared_dir), final_weights(reference_shared)
    weight_rel_l2, weight_max, where = weight_differences(weights, reference_weights)
    loss_diffs = [abs(summary.losses[s] - reference_summary.losses[s])
                  for s in summary.losses if s in reference_summary.losses]
    return {"reference": reference_summary, "weight_rel_l2": weight_rel_l2, "max_weight_diff": weight_max,
            "max_weight_diff_in": where, "max_loss_diff": max(loss_diffs, default=float("nan"))}
