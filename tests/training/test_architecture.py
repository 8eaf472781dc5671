"""The trainer package's architecture (training/importlinter.ini, explained in
docs/design/layout.md), checked with import-linter: no cycles, layers one way, no test-only
dependency. Each contract is also shown to break on a copy of the package with one bad import,
so a check that silently passes everything would fail here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "training" / "importlinter.ini"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if package_parent is not None:  # found before the installed package
        env["PYTHONPATH"] = f"{package_parent}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def verdicts(report: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' report (names may wrap)."""
    section = report.split("Analyzed", 1)[1].split("Contracts:", 1)[0]
    text = " ".join(re.sub(r"\(\d+ ignored imports?\)", "", section.split("\n", 2)[2]).split())
    return {name.strip(): verdict for name, verdict in re.findall(r"(.+?) (KEPT|BROKEN)", text)}


def test_the_package_keeps_every_contract():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(verdicts(result.stdout).values()) == {"KEPT"} and len(verdicts(result.stdout)) == 6, result.stdout


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    # Product code reaching up into the local stand-ins.
    ("checkpoint/api.py", "import tensile.local.cluster", "Layers go one way (entry points > stand-ins > worker > loop > parts > values)"),
    # directory_tier imports ranges: the reverse closes a loop between siblings.
    ("checkpoint/ranges.py", "import tensile.checkpoint.directory_tier", "No import cycles between siblings at any depth"),
    # Two parts of the same layer are independent of each other.
    ("data/__init__.py", "import tensile.checkpoint", "Layers go one way (entry points > stand-ins > worker > loop > parts > values)"),
    ("elastic/ledger.py", "import moto", "The package never imports what only its tests install"),
    # The scaler's core stays importable by a controller that installs no torch, no cluster client.
    ("scaler/policy.py", "import torch", "The scaler's policy core imports no cluster, cloud or tensor library"),
    ("local/scaling.py", "import lightkube", "Only the cluster controller imports the Kubernetes client (the cluster extra)"),
    ("cluster/observe.py", "import torch", "The cluster controller imports no tensor library (it runs on a CPU pod)"),
    # The controller and the local actuator are siblings: what both need lives in tensile.scaler.
    ("cluster/controller.py", "import tensile.local.scaling", "Layers go one way (entry points > stand-ins > worker > loop > parts > values)"),
])
def test_each_contract_breaks_on_a_bad_import(tmp_path, module, bad_import, contract):
    copy = tmp_path / "tensile"
    shutil.copytree(REPO / "training" / "tensile", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{bad_import}  # the deliberate violation\n")
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert verdicts(result.stdout)[contract] == "BROKEN", result.stdout
