"""Shared fixtures for the policy tests: one pack process for the whole session (started the way
the CLI starts it, called over gRPC), and each stack's mocked program run once, in its own process."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra import mocks  # noqa: E402
from policies import runner  # noqa: E402

STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def analyzer():
    with runner.Analyzer() as pack:
        yield pack


@pytest.fixture(scope="session")
def stack_runs() -> dict[str, mocks.ProgramRun]:
    with ThreadPoolExecutor(max_workers=len(STACKS)) as pool:
        runs = dict(zip(STACKS, pool.map(mocks.run_isolated, STACKS)))
    for name, run in runs.items():
        if run.error:
            pytest.fail(f"stack {name} failed under mocks: {run.error}")
    return runs
