"""scripts/gpu_check.py on this machine's CPU (gloo, bf16, a small model): what the GPU check
does there, end to end — its runs, a SIGTERM stop timed to its commit, the figures read off the
ledger, and a CPU checkpoint of 2 workers resumed at another world size and held to the losses of
the run that made it. Only the device (CUDA, NCCL, fp16) differs on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.full
@pytest.mark.timeout(900)
def test_the_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    env_python = [sys.executable, str(SCRIPT)]
    subprocess.run(env_python + ["prepare", "--inputs", str(inputs)], check=True, timeout=600)
    done = subprocess.run(env_python + ["run", "--small", "--inputs", str(inputs), "--out", str(out),
                                        "--work", str(tmp_path / "work")], timeout=600, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bf16 = report["runs"]["bf16"]
    assert bf16["steps_done"] >= 8 and bf16["step_s"] > 0 and bf16["tokens_per_s"] > 0
    assert bf16["emergency_save_s"] is not None and bf16["emergency_save_s"] > 0
    assert bf16["mfu"] is None  # no GPU, no peak to measure against
    reshard = report["reshard"]
    assert reshard["passed"], reshard
    assert (reshard["from_world_size"], reshard["to_world_size"], reshard["resumed_step"]) == (2, 1, 6)
    assert reshard["steps_compared"] == reshard["steps_expected"] == 6
    assert "Reshard: CPU checkpoint of 2 workers" in (out / "report.md").read_text()
