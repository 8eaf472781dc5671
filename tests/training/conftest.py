"""The fault proxy that sits in front of the loopback S3 (tests/conftest.py) for the tier tests;
DeepSpeed's process-wide state cleared after every test that left no process group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The loopback servers the tests script (IMDS, the S3 fault proxy) live beside the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault_proxy import FaultProxy  # noqa: E402


@pytest.fixture
def fault_proxy(moto_url) -> FaultProxy:
    proxy = FaultProxy(moto_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def deepspeed_forgets_destroyed_groups():
    """A worker makes one process group in its life; tests make and destroy several in one
    process. DeepSpeed keeps its backend and a clone of the world group in module globals, and an
    engine built after the group that made them is destroyed would broadcast on a dead group."""
    yield
    import torch.distributed as dist

    if "deepspeed" not in sys.modules or dist.is_initialized():
        return
    import deepspeed.comm.comm as deepspeed_comm
    from deepspeed.utils import groups

    deepspeed_comm.cdb = None
    groups._WORLD_GROUP = None
