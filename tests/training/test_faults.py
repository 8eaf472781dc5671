"""The fault hooks' stand-ins for compute (real-process tests and the market demo lean on them)."""

from __future__ import annotations

import pytest

from tensile.testing import faults
from tensile.testing.faults import STEP_WORK_VARIABLE, EnvironmentFaults


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", calls.append)
    return calls


def test_step_work_is_shared_by_the_world_so_more_workers_are_faster(slept):
    hooks = EnvironmentFaults({STEP_WORK_VARIABLE: "0.9"})
    for world_size in (1, 2, 3):
        hooks.before_step(step=1, rank=0, world_size=world_size)
    assert slept == pytest.approx([0.9, 0.45, 0.3])


def test_step_delay_is_the_same_at_any_world_size(slept):
    hooks = EnvironmentFaults({"TENSILE_FAULT_STEP_DELAY_S": "0.25"})
    for world_size in (1, 3):
        hooks.before_step(step=1, rank=1, world_size=world_size)
    assert slept == [0.25, 0.25]
