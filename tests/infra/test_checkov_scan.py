"""checkov over every stack's rendered Kubernetes objects: zero unwaived failures; each waiver
carries a one-line reason. The scan takes about 30-60 s (two mocked runs plus checkov), and
several minutes more the first time, when it creates .venv-checkov: `make test-full` only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIVERS = REPO_ROOT / "scripts" / "checkov-waivers.txt"


def test_every_checkov_waiver_names_a_check_and_gives_a_reason():
    entries = [line.split(None, 1) for line in WAIVERS.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert entries
    for entry in entries:
        assert re.fullmatch(r"CKV_K8S_\d+", entry[0]), entry
        assert len(entry) == 2 and len(entry[1].split()) >= 5, f"{entry[0]} needs a one-line reason"
    assert len({e[0] for e in entries}) == len(entries)


@pytest.mark.full
def test_checkov_finds_no_unwaived_failure_in_any_stack():
    proc = subprocess.run([str(REPO_ROOT / "scripts" / "checkov-scan.sh")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"Passed checks: \d+, Failed checks: 0", proc.stdout), proc.stdout
