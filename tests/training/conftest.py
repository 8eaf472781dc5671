"""A loopback S3 (moto's server mode) for the checkpoint tier tests, with the fault proxy that
sits in front of it; both live in this process, on 127.0.0.1 ports of their own."""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path

import pytest

# The loopback servers the tests script (IMDS, the S3 fault proxy) live beside the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault_proxy import FaultProxy  # noqa: E402


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


@pytest.fixture
def fault_proxy(moto_url) -> FaultProxy:
    proxy = FaultProxy(moto_url).start()
    yield proxy
    proxy.stop()
