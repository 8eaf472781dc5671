"""Shared fixtures for the policy tests: one pack process for the whole session (started the way
the CLI starts it, called over gRPC), and each stack's mocked program run once, in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from policies import runner  # noqa: E402

STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def analyzer():
    with runner.Analyzer() as pack:
        yield pack


