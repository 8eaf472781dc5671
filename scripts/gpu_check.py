"""The GPU check: Tensile's trainer on a machine with NVIDIA GPUs and no network.

    scripts/gpu_check.py prepare --inputs .gpu-check     (here, on CPU: the resharding input)
    scripts/gpu_check.py run --inputs .gpu-check --out DIR   (there; scripts/gpu-check.sh)

`run` trains, through the real launcher, worker and checkpointing (one node, one process per GPU,
NCCL):
  1. bf16 and fp16 steps of a model of >= 300 M parameters, with periodic background checkpoints
     and a SIGTERM stop: step time, tokens/s, MFU, checkpoint stall and the emergency save's time
     (SIGTERM to its commit);
  2. a resume of a checkpoint that 2 CPU workers saved (ZeRO-2, fp32, made by `prepare`) at the
     GPU world size, whose losses are compared with the CPU run's own next steps.
It writes report.json and report.md to --out. `--small` runs the same on a small model (the CPU
test of this script, tests/integration/test_gpu_check.py, runs it so on gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

RESHARD_JOB: dict[str, Any] = {
    "run": {"name": "gpu-check-reshard", "seed": 5, "steps": 12, "log_every": 4},
    "model": {"vocab_size": 256, "seq_len": 32, "d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
    "data": {"url": "data", "generate": {"num_samples": 512, "seed": 3}},
    "optimizer": {"lr": 3e-3, "warmup_steps": 2},
    "batch": {"global_batch_size": 8, "micro_batch_sizes": [1, 2, 4, 8]},
    "zero": {"stage": 2},
    "elastic": {"min_nodes": 1, "max_nodes": 2, "collective_timeout_s": 30, "step_watchdog_s": 60,
                "startup_timeout_s": 240, "max_failures": 1},
    "checkpoint": {"every_steps": 6, "keep_last": 3, "asynchronous": False},
}
RESUME_STEP = 6
"""The CPU run's checkpoint the GPU resumes from; the CPU run's steps after it are the reference."""
LOSS_TOLERANCE = 2e-3
"""Largest |GPU loss - CPU loss| accepted per step after the resume (fp32 on both; TF32 off): the
two differ only in the order of floating-point sums, about 1e-6 relative on a loss near 5."""

STOP_AT_STEP = 25
"""SIGTERM once this step is done: background saves at 10 and 20 before it, 15 steps of margin after
it for the signal to land while the run still trains."""

LARGE_MODEL = {"vocab_size": 32768, "seq_len": 1024, "d_model": 1024, "n_layers": 24, "n_heads": 16, "dropout": 0.0}
SMALL_MODEL = {"vocab_size": 256, "seq_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0}

PEAK_DENSE_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                         "A10G": 125e12}
"""Dense bf16 (and fp16) tensor-core peaks per GPU, from the vendors' data sheets, for MFU."""


def write_job(run_dir: Path, job: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_one_node(run_dir: Path, config_path: Path, *, env: dict[str, str],
                 stop_at_step: int | None = None, timeout_s: float) -> dict[str, Any]:
    """Run one node to its end (or SIGTERM it once `stop_at_step` is done); the ledger's events,
    and the seconds from SIGTERM to the stop checkpoint's commit."""
    from tensile.config import load_config
    from tensile.elastic.ledger import RunLedger
    from tensile.local.cluster import LocalCluster, last_step
    from tensile.local.demo import ensure_data

    config = load_config(config_path)
    ensure_data(config)
    ledger = RunLedger(config.checkpoint.ledger_path)
    signalled_at: float | None = None
    with LocalCluster(run_dir, config_path, env=env) as cluster:
        cluster.start_store()
        cluster.start_node("gpu-node")  # one process per GPU: the config's elastic.processes_per_node
        deadline = time.monotonic() + timeout_s
        while cluster.nodes["gpu-node"].running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run_dir.name}: no end in {timeout_s:.0f} s; logs in {run_dir / 'logs'}")
            if stop_at_step is not None and signalled_at is None and last_step(ledger.events()) >= stop_at_step:
                signalled_at = time.time()
                cluster.terminate("gpu-node")
            time.sleep(0.05)
    events = ledger.events()
    stop_saves = [e for e in events if e["event"] == "checkpoint" and e.get("reason") == "stop"]
    emergency_s = stop_saves[-1]["t"] - signalled_at if signalled_at is not None and stop_saves else None
    return {"events": events, "emergency_save_s": emergency_s}


def throughput(events: list[dict], *, tokens_per_step: int, parameters: int, peak_flops: float | None,
               warmup_steps: int = 3) -> dict[str, Any]:
    """Median step time after warm-up, tokens/s and MFU (6·N FLOPs per token, forward and backward)."""
    times = [e["step_s"] for e in events if e["event"] == "step" and e["step"] > warmup_steps]
    if not times:
        return {"steps_timed": 0}
    step_s = statistics.median(times)
    tokens_per_s = tokens_per_step / step_s
    saves = [e for e in events if e["event"] == "checkpoint"]
    background = [e["stall_s"] for e in saves if e.get("asynchronous")]
    return {"steps_timed": len(times), "step_s": round(step_s, 4), "tokens_per_s": round(tokens_per_s),
            "mfu": round(6 * parameters * tokens_per_s / peak_flops, 4) if peak_flops else None,
            "checkpoint_stall_s": round(max(background), 4) if background else None,
            "checkpoint_bytes": saves[-1].get("bytes") if saves else None}


def parameter_count(model: dict[str, Any]) -> int:
    import torch

    from tensile.config import ModelConfig
    from tensile.model import build_model

    with torch.device("meta"):
        built = build_model(ModelConfig(**model))
    return sum(p.numel() for p in built.parameters())


def precision_job(model: dict[str, Any], precision: str, *, processes: int, steps: int) -> dict[str, Any]:
    seq_len = model["seq_len"]
    return {
        "run": {"name": f"gpu-check-{precision}", "seed": 1, "steps": steps, "log_every": 5},
        "model": model,
        "precision": precision,
        "data": {"url": "data", "generate": {"num_samples": 64 * processes, "seed": 1}},
        "optimizer": {"lr": 3e-4, "warmup_steps": 2},
        "batch": {"global_batch_size": 8 * processes, "micro_batch_sizes": [1, 2, 4, 8]},
        "zero": {"stage": 1},
        "elastic": {"min_nodes": 1, "max_nodes": 1, "processes_per_node": processes, "collective_timeout_s": 120,
                    "step_watchdog_s": 300, "startup_timeout_s": 300, "max_failures": 0},
        "checkpoint": {"every_steps": 10, "keep_last": 2, "asynchronous": True},
        "_tokens_per_step": 8 * processes * seq_len,
    }


def prepare(inputs: Path) -> None:
    """On CPU (gloo, fp32): 2 workers train the small job; its checkpoint at RESUME_STEP, pinned as
    the resume point, and its losses after it are what the GPU run resumes from and is held to."""
    if inputs.exists():
        shutil.rmtree(inputs)
    run_dir = inputs / "cpu-run"
    config_path = write_job(run_dir, {**RESHARD_JOB, "data": {**RESHARD_JOB["data"], "url": str(run_dir / "data")},
                                      "checkpoint": {**RESHARD_JOB["checkpoint"],
                                                     "shared_dir": str(run_dir / "shared"),
                                                     "local_dir": str(run_dir / "local")}})
    from tensile.checkpoint.catalog import step_of
    from tensile.checkpoint.tools import list_checkpoints, rollback
    from tensile.local.cluster import LocalCluster
    from tensile.local.demo import ensure_data
    from tensile.config import load_config
    from tensile.elastic.ledger import RunLedger

    ensure_data(load_config(config_path))
    env = {"DS_ACCELERATOR": "cpu"}
    with LocalCluster(run_dir, config_path, env=env) as cluster:
        cluster.start_store()
        for node in ("cpu-a", "cpu-b"):
            cluster.start_node(node)
        if not cluster.wait(600):
            raise RuntimeError(f"the CPU run did not end; logs in {run_dir / 'logs'}")
    events = RunLedger(run_dir / "shared").events()
    losses = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    if max(losses, default=0) != RESHARD_JOB["run"]["steps"]:
        raise RuntimeError(f"the CPU run ended at step {max(losses, default=0)}; logs in {run_dir / 'logs'}")
    # The GPU's starting point: the CPU run's shared tier, its data, and the checkpoint to resume.
    checkpoint = inputs / "checkpoint"
    shutil.copytree(run_dir / "shared", checkpoint / "shared",
                    ignore=shutil.ignore_patterns("events", "events.jsonl", "rounds", "failures",
                                                  "status.json", "round-summaries"))
    shutil.copytree(run_dir / "data", checkpoint / "data")
    resume = next(row.checkpoint_id for row in list_checkpoints(str(checkpoint / "shared"), verify=False)
                  if step_of(row.checkpoint_id) == RESUME_STEP)
    rollback(str(checkpoint / "shared"), resume)
    (checkpoint / "reference.json").write_text(json.dumps(
        {"resume_step": RESUME_STEP, "world_size": 2, "losses": {str(s): v for s, v in sorted(losses.items())}}))
    shutil.rmtree(run_dir)
    print(f"prepared {checkpoint}: resume at step {RESUME_STEP} of {RESHARD_JOB['run']['steps']}")


def reshard_check(inputs: Path, work: Path, *, processes: int, env: dict[str, str]) -> dict[str, Any]:
    reference = json.loads((inputs / "checkpoint" / "reference.json").read_text())
    run_dir = work / "reshard"
    shutil.copytree(inputs / "checkpoint", run_dir)
    job = {**RESHARD_JOB,
           "data": {"url": str(run_dir / "data")},
           "elastic": {**RESHARD_JOB["elastic"], "max_nodes": 1, "processes_per_node": processes},
           "checkpoint": {**RESHARD_JOB["checkpoint"], "shared_dir": str(run_dir / "shared"),
                          "local_dir": str(run_dir / "local")}}
    config_path = write_job(run_dir, job)
    result = run_one_node(run_dir, config_path, env=env, timeout_s=300)
    rounds = [e for e in result["events"] if e["event"] == "round-start"]
    losses = {e["step"]: e["loss"] for e in result["events"] if e["event"] == "step"}
    cpu = {int(s): v for s, v in reference["losses"].items() if int(s) > reference["resume_step"]}
    differences = {s: abs(losses[s] - v) for s, v in cpu.items() if s in losses}
    worst = max(differences.values(), default=None)
    return {"resumed_step": rounds[0]["resumed_step"] if rounds else None,
            "from_world_size": reference["world_size"], "to_world_size": rounds[0]["world_size"] if rounds else None,
            "steps_compared": len(differences), "steps_expected": len(cpu),
            "max_abs_loss_difference": worst, "tolerance": LOSS_TOLERANCE,
            "passed": bool(rounds) and rounds[0]["resumed_step"] == reference["resume_step"]
            and len(differences) == len(cpu) and worst is not None and worst <= LOSS_TOLERANCE}


def versions() -> dict[str, Any]:
    import deepspeed
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "ds_accelerator": os.environ.get("DS_ACCELERATOR")}


def peak_flops(gpu_names: list[str]) -> float | None:
    for name in gpu_names[:1]:
        for key, flops in PEAK_DENSE_BF16_FLOPS.items():
            if key in name:
                return flops
    return None


def run(inputs: Path, out: Path, *, small: bool, work: Path) -> int:
    found = versions()
    processes = max(1, len(found["gpus"]))
    env = {} if found["gpus"] else {"DS_ACCELERATOR": "cpu"}
    if small:  # a small model's step takes milliseconds: slowed, so the SIGTERM lands mid-run
        env["TENSILE_FAULT_STEP_DELAY_S"] = "0.05"
    report: dict[str, Any] = {"versions": found, "world_size": processes, "runs": {}}
    if processes == 1 and found["gpus"]:
        report["note"] = ("one GPU: NCCL ran at world size 1, which proves nothing about ranks > 0 sharing a node "
                          "(set_device per local rank, peer collectives)")
    model = SMALL_MODEL if small else LARGE_MODEL
    parameters = parameter_count(model)
    report["parameters"] = parameters
    precisions = ["bf16", "fp16"] if found["gpus"] else ["bf16"]  # CPU has no fp16 kernels
    steps = 40
    for precision in precisions:
        job = precision_job(model, precision, processes=processes, steps=steps)
        tokens_per_step = job.pop("_tokens_per_step")
        run_dir = work / precision
        job["data"]["url"] = str(run_dir / "data")
        job["checkpoint"].update(shared_dir=str(run_dir / "shared"), local_dir=str(run_dir / "local"))
        began = time.monotonic()
        try:
            result = run_one_node(run_dir, write_job(run_dir, job), env=env,
                                  stop_at_step=STOP_AT_STEP, timeout_s=120 if small else 150)
        except RuntimeError as e:
            report["runs"][precision] = {"error": str(e), "log_tail": _log_tail(run_dir)}
            continue
        figures = throughput(result["events"], tokens_per_step=tokens_per_step, parameters=parameters,
                             peak_flops=peak_flops(found["gpus"]))
        losses = [e["loss"] for e in result["events"] if e["event"] == "step"]
        report["runs"][precision] = {**figures, "emergency_save_s": _round(result["emergency_save_s"]),
                                     "steps_done": len(losses), "first_loss": losses[0] if losses else None,
                                     "last_loss": losses[-1] if losses else None, "wall_s": round(time.monotonic() - began, 1)}
    try:
        report["reshard"] = reshard_check(inputs, work, processes=processes, env=env)
    except RuntimeError as e:
        report["reshard"] = {"error": str(e), "log_tail": _log_tail(work / "reshard"), "passed": False}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render(report))
    print(render(report))
    ran = all("error" not in r and r.get("steps_done") for r in report["runs"].values())
    return 0 if ran and report["reshard"].get("passed") else 1


def render(report: dict[str, Any]) -> str:
    v = report["versions"]
    lines = [f"# Tensile GPU check", "",
             f"torch {v['torch']}, DeepSpeed {v['deepspeed']}, CUDA {v['cuda']}, NCCL {v['nccl']}, "
             f"Python {v['python']}; GPUs: {', '.join(v['gpus']) or 'none (CPU run)'}; "
             f"world size {report['world_size']}; model {report['parameters'] / 1e6:.1f} M parameters", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}.", ""]
    lines += ["| precision | step s | tokens/s | MFU | ckpt stall s | emergency save s | steps | loss first → last |",
              "|---|---|---|---|---|---|---|---|"]
    for precision, r in report["runs"].items():
        if "error" in r:
            lines.append(f"| {precision} | failed: {r['error'][:120]} |||||||")
            continue
        lines.append(f"| {precision} | {r.get('step_s')} | {r.get('tokens_per_s')} | {r.get('mfu')} | "
                     f"{r.get('checkpoint_stall_s')} | {r.get('emergency_save_s')} | {r.get('steps_done')} | "
                     f"{_round(r.get('first_loss'))} → {_round(r.get('last_loss'))} |")
    rs = report["reshard"]
    lines += ["", "Reshard: " + (f"failed to run: {rs['error'][:200]}" if "error" in rs else
              f"CPU checkpoint of {rs['from_world_size']} workers resumed at step {rs['resumed_step']} on "
              f"{rs['to_world_size']}; max |loss − CPU loss| over {rs['steps_compared']}/{rs['steps_expected']} "
              f"steps = {rs['max_abs_loss_difference']} (tolerance {rs['tolerance']}): "
              + ("passed" if rs["passed"] else "FAILED")), ""]
    return "\n".join(lines)


def _round(value: float | None, digits: int = 4) -> float | None:
    return round(value, digits) if isinstance(value, float) else value


def _log_tail(run_dir: Path, lines: int = 30) -> str:
    logs = sorted((run_dir / "logs").glob("*.log")) if (run_dir / "logs").exists() else []
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                     for log in logs)[-6000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--inputs", type=Path, default=Path(".gpu-check"))
    r = sub.add_parser("run")
    r.add_argument("--inputs", type=Path, default=Path(".gpu-check"))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/tensile-gpu-check"))
    r.add_argument("--small", action="store_true", help="a small model (the script's own CPU test)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.inputs.resolve())
        return 0
    if args.work.exists():
        shutil.rmtree(args.work)
    return run(args.inputs.resolve(), args.out.resolve(), small=args.small, work=args.work.resolve())


if __name__ == "__main__":
    sys.exit(main())
