"""Fixtures shared across the suites: each stack's mocked program runs once per session, in its
own process (the SDK's mocks are process-global), both stacks at once; and a loopback S3 (moto's
server mode, in this process on a 127.0.0.1 port of its own) for the checkpoint tier and trainer."""

from __future__ import annotations

import logging
import sys
import uuid
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


def _with_examples_enabled(stack: str):
    """The stack file's config with every `enabled: false` job entry switched on."""
    import yaml

    from infra import mocks

    config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    jobs = [dict(job, enabled=True) for job in config.get("tensile:jobs") or []]
    return mocks.run_isolated(stack, config={**config, "tensile:jobs": jobs})


@pytest.fixture(scope="session")
def example_runs():
    """Each stack with its example jobs enabled: what a team that turns one on deploys. The tests of
    the job's objects read these; `stack_runs` is the stack exactly as its file ships."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    with ThreadPoolExecutor(max_workers=len(STACKS)) as pool:
        runs = dict(zip(STACKS, pool.map(_with_examples_enabled, STACKS)))
    for name, run in runs.items():
        if run.error:
            pytest.fail(f"stack {name} with its example jobs enabled failed under mocks: {run.error}")
    return runs


@pytest.fixture(scope="session")
def moto_url() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path) -> None:
    """Fake credentials and no config from the machine: boto3 must never reach a real account."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bucket(moto_url, aws_env) -> str:
    """A new, empty bucket on the loopback server for each test."""
    import boto3

    name = f"tensile-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name
