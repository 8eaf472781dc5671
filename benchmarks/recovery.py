"""Recovery after a lost node, against the floor: a fresh start that loads the same checkpoint.

recovery = node killed → first completed step of the re-formed group (detection, rendezvous,
           worker start, checkpoint load, one step).
noticed  = spot interruption notice on one node → first step of the survivor at the smaller
           size (agreed stop, emergency checkpoint, the node's leave, rendezvous, worker start,
           checkpoint load, one step), with torchrun's default heartbeat (5 s × 3).
floor    = a fresh `tensile launch` of one node on a copy of the run → its first completed step
           (process start, imports, rendezvous, checkpoint load, one step): what any restart costs.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from tensile.data import generate_corpus
from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster, current_world_size, last_step
from tensile.local.metadata_server import MetadataServer

JOB = {
    "run": {"name": "bench", "seed": 5, "steps": 400, "log_every": 50},
    "model": {"vocab_size": 256, "seq_len": 64, "d_model": 96, "n_layers": 3, "n_heads": 4, "dropout": 0.1},
    "batch": {"global_batch_size": 16, "micro_batch_sizes": [1, 2, 4, 8]},
    "zero": {"stage": 0},
    "elastic": {"min_nodes": 1, "max_nodes": 2, "collective_timeout_s": 5, "step_watchdog_s": 15,
                "keep_alive_interval_s": 2, "keep_alive_max_attempts": 3},
    "checkpoint": {"every_steps": 10, "keep_last": 3},
}
STEP_DELAY = {"TENSILE_FAULT_STEP_DELAY_S": "0.05"}


# torchrun's (and Tensile's) default heartbeat: a vanished node is dropped after 15 s.
NOTICED_JOB = {"elastic": {**JOB["elastic"], "keep_alive_interval_s": 5, "keep_alive_max_attempts": 3},
               "signals": {"imds_enabled": True, "imds_poll_s": 0.1}}


def write_config(run_dir: Path, data_url: str, **sections: dict) -> Path:
    config = {**JOB, **sections, "data": {"url": data_url},
              "checkpoint": {**JOB["checkpoint"], "shared_dir": str(run_dir / "shared"),
                             "local_dir": str(run_dir / "local")}}
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def first_step_after(events: list[dict], t: float) -> float | None:
    starts = [e["t"] for e in events if e["event"] == "round-start" and e["t"] > t]
    if not starts:
        return None
    return next((e["t"] for e in events if e["event"] == "step" and e["t"] > starts[0]), None)


def measure_loss(root: Path, data_url: str, how: str, stage: int = 0) -> tuple[float, Path]:
    """Seconds from losing node-b (killed, or frozen) to the survivor's first step."""
    run_dir = root / f"loss-{how}-{time.time_ns()}"
    config = write_config(run_dir, data_url, zero={"stage": stage})
    ledger = RunLedger(run_dir / "shared")
    with LocalCluster(run_dir, config, env=STEP_DELAY) as cluster:
        cluster.start_store()
        cluster.start_node("node-a")
        cluster.start_node("node-b")
        lost_at = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            events = ledger.events()
            if lost_at is None and last_step(events) >= 25 and current_world_size(events) == 2:
                (cluster.kill if how == "killed" else cluster.freeze)("node-b")
                lost_at = time.time()
            if lost_at is not None:
                recovered = first_step_after(events, lost_at)
                if recovered is not None:
                    return recovered - lost_at, run_dir
            time.sleep(0.05)
    raise TimeoutError(f"no recovery within 240 s; see {run_dir / 'logs'}")


def measure_noticed_leave(root: Path, data_url: str) -> tuple[dict[str, float], Path]:
    """Seconds from node-b's interruption notice to the survivor's first step, and its parts."""
    run_dir = root / f"noticed-{time.time_ns()}"
    config = write_config(run_dir, data_url, **NOTICED_JOB)
    ledger = RunLedger(run_dir / "shared")
    # INFO from torchrun's agent: when its rendezvous completed, for the breakdown.
    env = {**STEP_DELAY, "LOGLEVEL": "INFO"}
    with MetadataServer() as doomed, MetadataServer() as quiet, LocalCluster(run_dir, config, env=env) as cluster:
        cluster.start_store()
        cluster.start_node("node-a", extra_env={"TENSILE_IMDS_ENDPOINT": quiet.endpoint})
        cluster.start_node("node-b", extra_env={"TENSILE_IMDS_ENDPOINT": doomed.endpoint})
        noticed_at = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            events = ledger.events()
            if noticed_at is None and last_step(events) >= 25 and current_world_size(events) == 2:
                doomed.interrupt()
                noticed_at = time.time()
            if noticed_at is not None:
                recovered = first_step_after(events, noticed_at)
                if recovered is not None:
                    return leave_breakdown(events, run_dir / "logs" / "node-a.log", noticed_at, recovered), run_dir
            time.sleep(0.05)
    raise TimeoutError(f"no recovery within 240 s; see {run_dir / 'logs'}")


def leave_breakdown(events: list[dict], survivor_log: Path, noticed_at: float, recovered: float) -> dict[str, float]:
    """Where the seconds of a noticed leave went, from the ledger and the survivor's agent log."""
    saved = next(e["t"] for e in events if e["event"] == "checkpoint" and e["reason"] == "stop")
    round_start = next(e["t"] for e in events if e["event"] == "round-start" and e["t"] > noticed_at)
    left = next((e["t"] for e in events if e["event"] == "rendezvous-leave"), None)
    lines = survivor_log.read_text(errors="replace").splitlines()
    workers_exited = _log_time(lines, "failed (exitcode: 75)", after=noticed_at)
    rendezvous_done = _log_time(lines, "Rendezvous complete for workers", after=noticed_at)
    parts = {"total": recovered - noticed_at, "stop+save": saved - noticed_at,
             "exit seen": workers_exited - saved, "rendezvous": rendezvous_done - workers_exited,
             "worker start": round_start - rendezvous_done, "load+step": recovered - round_start}
    if left is not None:
        parts["leave written"] = left - noticed_at
    # Steps redone after the leave, and what a job saving only periodically would have redone.
    round_event = next(e for e in events if e["event"] == "round-start" and e["t"] > noticed_at)
    done = max(e["step"] for e in events if e["event"] == "step" and e["t"] < round_start)
    periodic = max((e["step"] for e in events if e["event"] == "checkpoint" and e["reason"] == "periodic"
                    and e["step"] <= done), default=0)
    parts["steps lost"] = done - round_event["resumed_step"]
    parts["steps lost, periodic only"] = done - periodic
    return parts


_GLOG_TIME = re.compile(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+) ")


def _log_time(lines: list[str], marker: str, *, after: float) -> float:
    """The time of the first agent log line with marker after a moment (glog-style local time)."""
    year = datetime.now().year
    for line in lines:
        match = _GLOG_TIME.match(line)
        if match and marker in line:
            t = datetime.strptime(f"{year}{match[1]} {match[2]}", "%Y%m%d %H:%M:%S.%f").timestamp()
            if t > after:
                return t
    raise ValueError(f"no agent log line with {marker!r}")


def measure_floor(source_run: Path, root: Path) -> float:
    """A fresh single-node start on a copy of the run, loading its newest checkpoint."""
    run_dir = root / f"floor-{time.time_ns()}"
    shutil.copytree(source_run / "shared", run_dir / "shared")
    (run_dir / "shared" / "status.json").unlink(missing_ok=True)
    config = write_config(run_dir, yaml.safe_load((source_run / "config.yaml").read_text())["data"]["url"])
    ledger = RunLedger(run_dir / "shared")
    with LocalCluster(run_dir, config, env=STEP_DELAY) as cluster:
        started = time.time()
        cluster.start_store()
        cluster.start_node("node-fresh")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            recovered = first_step_after(ledger.events(), started)
            if recovered is not None:
                return recovered - started
            time.sleep(0.05)
    raise TimeoutError("fresh start did not step within 120 s")


def main(repeats: int = 2) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="tensile-bench-"))
    data_url = str(root / "data")
    generate_corpus(data_url, num_samples=2048, seq_len=64, seed=7)
    results: dict[str, list[float]] = {"killed": [], "frozen": [], "noticed": [], "killed-zero2": [], "floor": []}
    parts: list[dict[str, float]] = []
    cases = [c for c in os.environ.get("TENSILE_BENCH_CASES", "killed,frozen,noticed,killed-zero2").split(",") if c]
    for _ in range(repeats):
        for how in cases:
            if how == "noticed":
                breakdown, run_dir = measure_noticed_leave(root, data_url)
                parts.append(breakdown)
                results[how].append(breakdown["total"])
            elif how == "killed-zero2":  # the survivor also reshards the optimizer state 2 → 1
                results[how].append(measure_loss(root, data_url, "killed", stage=2)[0])
                continue
            else:
                seconds, run_dir = measure_loss(root, data_url, how)
                results[how].append(seconds)
            results["floor"].append(measure_floor(run_dir, root))
    medians = {k: statistics.median(v) for k, v in results.items() if v}
    floor = medians["floor"]
    print("Recovery after a lost node (median of %d; 2 → 1 workers, ZeRO-0 unless named; this machine)" % repeats)
    print(f"  floor: fresh start + imports + rendezvous + checkpoint load + 1 step  {floor:6.1f} s")
    for how, label in (("killed", "node SIGKILLed (sockets close)"), ("frozen", "node frozen (silent vanish)"),
                       ("noticed", "spot notice, node leaves (noticed leave)"),
                       ("killed-zero2", "node SIGKILLed, ZeRO-2 (reshard 2 → 1)")):
        if how in medians:
            print(f"  {label:<40} {medians[how]:6.1f} s   ratio to floor {medians[how] / floor:5.2f}x")
    if parts:
        print("  noticed leave, median per part (seconds; steps where named): " + ", ".join(
            f"{name} {statistics.median(p[name] for p in parts):.1f}" for name in parts[0]))
    print(f"  raw: {results}")
    if parts:
        print(f"  raw parts: {[{k: round(v, 2) for k, v in p.items()} for p in parts]}")
    shutil.rmtree(root, ignore_errors=True)
    return medians
