"""The architecture check: the import contracts of infra/ and policies/ (infra/importlinter.ini,
checked by import-linter) hold for the tree, and each of them fails on a tree with a bad import,
so the check can fail. Beside them, the two single files that must stay stdlib only."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "infra" / "importlinter.ini"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    # The tree under check comes first on the path (lint-imports builds its graph from sys.path).
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(cwd)}
    only = ["--contract", contract] if contract else []
    return subprocess.run([str(LINT_IMPORTS), "--config", str(CONFIG.relative_to(REPO_ROOT)), "--no-cache",
                           "--no-logo", *only], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _contract_names() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return {s.split(":")[-1]: parser[s]["name"] for s in parser.sections() if s.startswith("importlinter:contract:")}


def test_architecture_import_contracts_hold():
    proc = _lint(REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(_contract_names())} kept, 0 broken." in proc.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "crds", "*.json", "*.txt")
    for package, source in (("infra", REPO_ROOT / "infra"), ("policies", REPO_ROOT / "policies"),
                            ("tensile", REPO_ROOT / "training" / "tensile")):
        shutil.copytree(source, root / package, ignore=ignore)
    return root


# Each contract, and a bad import that must break it.
BAD_IMPORTS = [
    ("infra-layers", "infra/plan/pools.py", "from infra.components import tagging"),
    ("policies-layers", "policies/framework.py", "from policies import objects"),
    ("no-cycles", "infra/config/types.py", "from infra.config import stack"),
    ("policies-only-cost", "policies/compute.py", "from infra.config import types"),
    ("components-not-tools", "infra/components/network.py", "from infra.tools import preview"),
    ("mocks-for-tools", "infra/components/job.py", "from infra import mocks"),
    ("pack-through-runner", "infra/tools/team_add.py", "from policies import pack"),
    ("trainer-through-contract", "infra/plan/job.py", "from tensile import config"),
    ("enforcer-alone", "infra/enforcer.py", "from infra import cost"),
]


def test_architecture_tree_copy_passes_as_it_is(tree_copy):
    """So that a bad-import case fails because of its import, not because of the copy."""
    assert _lint(tree_copy).returncode == 0


def test_architecture_every_contract_has_a_bad_import_case():
    assert sorted(c for c, _, _ in BAD_IMPORTS) == sorted(_contract_names())


@pytest.mark.parametrize("contract, module, line", BAD_IMPORTS, ids=[c for c, _, _ in BAD_IMPORTS])
def test_architecture_check_fails_on_a_bad_import(tree_copy, contract, module, line):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # deliberately bad\n")
    try:
        proc = _lint(tree_copy, contract)
    finally:
        path.write_text(original)
    assert proc.returncode != 0 and "Contracts: 0 kept, 1 broken." in proc.stdout, proc.stdout


def _imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    return names


@pytest.mark.parametrize("path", ["infra/enforcer.py", "training/tensile/contract.py"])
def test_single_file_modules_import_only_the_standard_library(path):
    """The enforcer is deployed as that one file to a stock Python image; the contract is imported
    by the infra without the trainer's dependencies."""
    names = _imported_top_names(REPO_ROOT / path)
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def test_stdlib_check_sees_a_third_party_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nimport yaml\nfrom infra import cost\n")
    assert _imported_top_names(bad) - set(sys.stdlib_module_names) == {"yaml", "infra"}
