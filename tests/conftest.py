"""Fixtures shared by the infra and policy tests: each stack's mocked program runs once per
session, in its own process (the SDK's mocks are process-global), both stacks at once."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def stack_runs():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from infra import mocks

    with ThreadPoolExecutor(max_workers=len(STACKS)) as pool:
        runs = dict(zip(STACKS, pool.map(mocks.run_isolated, STACKS)))
    for name, run in runs.items():
        if run.error:
            pytest.fail(f"stack {name} failed under mocks: {run.error}")
    return runs
