"""`tensile demo --scenario market` end to end on real processes (gloo): the scaler grows the demo
job 1 → 2 → 3 when spot capacity appears, shrinks it to 1 at a price spike, suspends it when the
cloud reclaims its last node and resumes it when capacity returns; every stop is agreed (no step
lost) and the final weights match an undisturbed run of the same job."""

from __future__ import annotations

import pytest
from harness import rounds

from tensile.elastic.ledger import RunLedger
from tensile.local.scenario import WEIGHT_TOLERANCE, run_market_scenario
from tensile.scaler import ReasonKind


# 4-6 min on 2 busy cores (200 steps, then the reference run): make test-full. The actuator's and
# the scripted market's logic run in make test without processes (tests/training/local/).
@pytest.mark.full
def test_market_scenario_grows_shrinks_suspends_resumes_and_ends_at_the_undisturbed_weights(tmp_path):
    printed: list[str] = []
    result = run_market_scenario(tmp_path / "run", progress=lambda line: (printed.append(line), print(line)),
                                 timeout_s=900)
    log = "\n".join(printed)
    sized = [(decision.kind, decision.desired_nodes) for _, _, decision in result["decisions"]
             if decision.kind is not ReasonKind.HOLD]
    assert sized == [(ReasonKind.GROW, 2), (ReasonKind.GROW, 3), (ReasonKind.SHRINK_TRIGGER, 1),
                     (ReasonKind.SUSPEND, 0), (ReasonKind.RESUME, 1)], log
    assert result["status"]["state"] == "completed" and result["failures_spent"] == 0, log
    # Two stopped at the spike, the third reclaimed: each by one SIGTERM, after saving; the
    # resumed node finishes the run.
    assert result["exit_codes"] == {"node-0": 143, "node-1": 143, "node-2": 143, "node-3": 0}, result["exit_codes"]

    shared = result["run_dir"] / "shared"
    starts = rounds(shared)
    assert [r["world_size"] for r in starts] == [1, 2, 3, 1, 1], starts
    steps = [e for e in RunLedger(shared).events() if e["event"] == "step"]
    for start in starts[1:]:
        done_before = max(e["step"] for e in steps if e["t"] < start["t"])
        assert start["resumed_step"] == done_before, f"an agreed stop lost steps: {start}"
    assert sorted({e["step"] for e in steps}) == list(range(1, 201))

    assert "market: price spike" in log and "cloud: node-0 reclaimed" in log, log
    assert "suspended; pool cpu-spot offers fewer than the minimum" in log or "suspended; cooling down" in log, log
    assert result["max_weight_diff"] <= WEIGHT_TOLERANCE, (
        f"final weights {result['max_weight_diff']:.2e} from the undisturbed run, in "
        f"{result['max_weight_diff_in']} (tolerance {WEIGHT_TOLERANCE:.0e})")
