"""The fault proxy that sits in front of the loopback S3 (tests/conftest.py) for the tier tests."""

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
