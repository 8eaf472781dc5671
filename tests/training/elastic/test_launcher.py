"""When the launcher takes the run's status for the end of the run for its node."""

from __future__ import annotations

import pytest

from tensile.config import config_from_dict
from tensile.elastic.launcher import run_is_over

CONFIG = config_from_dict({"run": {"steps": 18, "extend_from_steps": 12}})
STARTED_AT = 1000.0


@pytest.mark.parametrize("status, over", [
    (None, False),
    ({"state": "completed", "step": 18, "t": 900.0}, True),
    # Completed at the old run.steps: this config trains it longer.
    ({"state": "completed", "step": 12, "t": 900.0}, False),
    ({"state": "completed", "t": 900.0}, True),  # a status without its step: as before
    ({"state": "failed", "reason": "failure budget spent", "t": 1001.0}, True),
    # Failed before this node started (a refused config, since fixed): starting again retries it.
    ({"state": "failed", "reason": "incompatible", "t": 999.0}, False),
])
def test_run_is_over_for_a_status(status, over):
    assert run_is_over(status, CONFIG, started_at=STARTED_AT) is over
