"""The trainer's pure parts."""

from __future__ import annotations

import pytest

from tensile.trainer import step_timeout


@pytest.mark.parametrize(("configured", "slowest", "timeout"), [
    (60.0, 10.0, 60.0),    # steps well inside the configured watchdog
    (60.0, 80.0, 240.0),   # 8 → 1 workers: a 10 s step became 80 s, and is not a hang
    (60.0, 0.0, 60.0),     # before any step of the round
    (0.6, 1.0, 3.0),
])
def test_the_step_watchdog_follows_the_slowest_step_of_the_round(configured, slowest, timeout):
    assert step_timeout(configured, slowest) == pytest.approx(timeout)
