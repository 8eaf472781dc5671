"""Recovery after a lost node, against the floor: a fresh start that loads the same checkpoint.

recovery = node killed → first completed step of the re-formed group (detection, rendezvous,
           worker start, checkpoint load, one step).
floor    = a fresh `tensile launch` of one node on a copy of the run → its first completed step
           (process start, imports, rendezvous, checkpoint load, one step): what any restart costs.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from tensile.data import generate_corpus
from tensile.ledger import RunLedger
from tensile.localcluster import LocalCluster, current_world_size, last_step

JOB = {
    "run": {"name": "bench", "seed": 5, "steps": 400, "log_every": 50},
    "model": {"vocab_size": 256, "seq_len": 64, "d_model": 96, "n_layers": 3, "n_heads": 4, "dropout": 0.1},
    "batch": {"global_batch_size": 16, "micro_batch_sizes": [1, 2, 4, 8]},
    "zero": {"stage": 0},
    "elastic": {"min_workers": 1, "max_workers": 2, "collective_timeout_s": 5, "step_watchdog_s": 15,
                "keep_alive_interval_s": 2, "keep_alive_max_attempts": 3},
    "checkpoint": {"every_steps": 10, "keep_last": 3},
}
STEP_DELAY = {"TENSILE_FAULT_STEP_DELAY_S": "0.05"}


def write_config(run_dir: Path, data_url: str, stage: int = 0) -> Path:
    config = {**JOB, "data": {"url": data_url}, "zero": {"stage": stage},
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
    config = write_config(run_dir, data_url, stage)
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
    results: dict[str, list[float]] = {"killed": [], "frozen": [], "floor": [], "killed-zero2": []}
    for _ in range(repeats):
        for how in ("killed", "frozen"):
            seconds, run_dir = measure_loss(root, data_url, how)
            results[how].append(seconds)
            results["floor"].append(measure_floor(run_dir, root))
        # The same loss under ZeRO-2: the survivor also reshards the optimizer state 2 → 1.
        results["killed-zero2"].append(measure_loss(root, data_url, "killed", stage=2)[0])
    medians = {k: statistics.median(v) for k, v in results.items()}
    floor = medians["floor"]
    print("Recovery after a lost node (median of %d; 2 → 1 workers, ZeRO-0 unless named; this machine)" % repeats)
    print(f"  floor: fresh start + imports + rendezvous + checkpoint load + 1 step  {floor:6.1f} s")
    for how, label in (("killed", "node SIGKILLed (sockets close)"), ("frozen", "node frozen (silent vanish)"),
                       ("killed-zero2", "node SIGKILLed, ZeRO-2 (reshard 2 → 1)")):
        print(f"  {label:<40} {medians[how]:6.1f} s   ratio to floor {medians[how] / floor:5.2f}x")
    print(f"  raw: {results}")
    shutil.rmtree(root, ignore_errors=True)
    return medians
