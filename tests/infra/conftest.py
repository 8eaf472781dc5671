"""Shared fixtures for the infra tests: each stack's program runs once per session, in its own
process (the SDK's mocks are process-global), both stacks at the same time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra import mocks  # noqa: E402

STACKS = ("dev", "prod")


# `dev`, `prod` and `run` are each stack with its example jobs enabled (tests/conftest.py): the
# shipped stack plus the job's objects, so the job's tests test a rendered job. The identity and
# inventory tests read `stack_runs`, the stack as shipped.
@pytest.fixture(scope="session")
def dev(example_runs) -> mocks.ProgramRun:
    return example_runs["dev"]


@pytest.fixture(scope="session")
def prod(example_runs) -> mocks.ProgramRun:
    return example_runs["prod"]


@pytest.fixture(params=STACKS)
def run(request, example_runs) -> mocks.ProgramRun:
    return example_runs[request.param]


@pytest.fixture(scope="session")
def raw_configs() -> dict[str, dict]:
    """Each stack file's config, decoded as the program sees it."""
    import yaml

    return {s: yaml.safe_load((REPO_ROOT / f"Pulumi.{s}.yaml").read_text())["config"] for s in STACKS}
