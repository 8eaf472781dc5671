"""Fixtures of the cluster scaler's test bench (cluster_bench.py): the stand-in, a fake clock, the
team's queues, moto on loopback for EC2 and the S3 checkpoint tier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_bench import CLUSTER_QUEUE, NAMESPACE, QUEUE, FakeClock, KubeStandIn, set_spend  # noqa: E402


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def standin(clock):
    server = KubeStandIn(clock, pods_ready_timeout_s=600, priority_classes={"high": 100}).start()
    yield server
    server.stop()


@pytest.fixture
def team(standin, clock):
    """The team's queues (32 GPUs of h100, 32 of a100), capacity for 4 h100 nodes, and the
    enforcer's spend entry."""
    standin.cluster_queue(CLUSTER_QUEUE, {"h100": (32, None), "a100": (32, None)})
    standin.local_queue(NAMESPACE, QUEUE, CLUSTER_QUEUE)
    standin.capacity.update({"h100": 4, "a100": 4})
    set_spend(standin, clock, 100.0)
    return standin


@pytest.fixture
def cloud(moto_url, aws_env, monkeypatch, bucket) -> str:
    """EC2 and S3 on the loopback moto server (boto3 honours AWS_ENDPOINT_URL); returns the run's
    checkpoint tier URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    return f"s3://{bucket}/team-vision/runs/llm"


