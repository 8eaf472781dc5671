"""The simulator against a measured run: the local demo (2 nodes, node-b frozen at step 40, node-c
added at step 80, 200 steps), simulated from its own ledger's measured costs and its disruption
schedule, compared with what the run did.

Two variants: the run recorded once in tests/fixtures/demo-run (re-record with its record.py), in
`make test`; and a real demo run made in the test, in `make test-full`: it fits in about a minute
(54 s here, the machine busy), but `make test` is already at ~10 of its 12 minutes. Measured: the
recorded run replay 10 vs 10, goodput 0.323 vs 0.311, wall 46.83 s vs 46.81 s; a fresh run replay
10 vs 10, goodput 0.316 vs 0.323, wall 41.71 s vs 41.66 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tensile.elastic.ledger import RunLedger
from tensile.metrics import run_history
from tensile.simulate.api import Disruption, DisruptionKind, SimJob, SimPool
from tensile.simulate.costs import costs_from_ledger, measured_goodput, round_gaps, step_s_by_nodes_from_ledger
from tensile.simulate.engine import simulate

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "demo-run"

REPLAY_LIMIT_STEPS = 1
"""Steps replayed, sim vs run: at most one step apart. The run loses the steps since its last
durable checkpoint, as the model does; the one step of slack is the step that may be in flight
when the driver freezes the node (the driver polls the ledger, so it may freeze a step late)."""
GOODPUT_LIMIT = 0.05
"""Goodput, absolute: the model takes every step at the median wall time of its node count and each
re-formation at its measured recovery, so what is left is the spread of step times about their
median (loaded 2-core machine) over the ~200 steps: a few percent of a wall time that recovery
dominates (the frozen node's heartbeat wait alone is ~15 s of ~50)."""
WALL_LIMIT_FRACTION = 0.25
"""Wall time, relative: loose, as the issue asks. Beyond the goodput's spread, the joining node's
start-up comes from the driver's clock (when it started node-c) to the group's stop, and the first
round's start (process start, imports, rendezvous) is not in the ledger at all."""


def _disruptions(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def _compare(events: list[dict], disruptions: list[dict]) -> dict[str, float]:
    steps_by_nodes = step_s_by_nodes_from_ledger(events, processes_per_node=1)
    nodes_range = range(1, 4)  # the demo's elastic range: 1..3 nodes
    step_s = {n: steps_by_nodes.get(n) or steps_by_nodes[min(steps_by_nodes, key=lambda m: abs(m - n))]
              for n in nodes_range}
    added = next(d for d in disruptions if d["kind"] == "node-added")
    join_gap = next(g for g in round_gaps(events) if g["after"] > g["before"])
    # The joining node's start-up: the driver started it, the group stopped for it at its last step.
    costs = costs_from_ledger(events)
    costs = costs.__class__(**{**{f: getattr(costs, f) for f in costs.__slots__}, "node_launch_s": 0.0,
                               "image_pull_s": 0.0, "tensile_start_s": join_gap["last_step_t"] - added["at"]})
    job = SimJob(name="tensile-demo", steps=200, min_nodes=1, max_nodes=3, processes_per_node=1,
                 samples_per_step=16, step_s_by_nodes=step_s, checkpoint_every_steps=10)
    pool = SimPool(name="local", gpu_model="cpu", instance_type="local", on_demand_usd_per_node_hour=0.0,
                   spot_usd_per_node_hour=0.0, spot=False, empty_node_linger_s=0.0)
    schedule = [Disruption(kind=DisruptionKind.LOST_UNWARNED if d["kind"] == "node-lost" else DisruptionKind.ADDED,
                           at_step=d["at_step"]) for d in disruptions]
    result = simulate(job, pool, costs, schedule=schedule, initial_nodes=2)
    useful, wall = measured_goodput(events)
    simulated_wall = result.completion_s - costs.startup_s  # the run's wall starts at its first step
    errors = {
        "steps_replayed_sim": result.steps_replayed, "steps_replayed_run": run_history(events)["steps_lost"],
        "goodput_sim": result.useful_s / simulated_wall, "goodput_run": useful / wall,
        "wall_sim_s": simulated_wall, "wall_run_s": wall,
    }
    errors["steps_replayed_error"] = abs(errors["steps_replayed_sim"] - errors["steps_replayed_run"])
    errors["goodput_error"] = abs(errors["goodput_sim"] - errors["goodput_run"])
    errors["wall_error_fraction"] = abs(simulated_wall - wall) / wall
    print("simulated vs measured demo run:", {k: round(v, 4) for k, v in errors.items()})
    return errors


def _check(errors: dict[str, float]) -> None:
    assert errors["steps_replayed_run"] > 0, "the recorded run must have lost steps, or replay is not tested"
    assert errors["steps_replayed_error"] <= REPLAY_LIMIT_STEPS, errors
    assert errors["goodput_error"] <= GOODPUT_LIMIT, errors
    assert errors["wall_error_fraction"] <= WALL_LIMIT_FRACTION, errors


def test_simulate_matches_the_recorded_demo_run():
    events = RunLedger(FIXTURE / "shared").events()
    _check(_compare(events, _disruptions(FIXTURE / "disruptions.json")))


@pytest.mark.full
@pytest.mark.integration
def test_simulate_matches_a_real_demo_run(tmp_path):
    from tensile.local.demo import run_demo

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    result = run_demo(tmp_path / "demo", with_reference=False, timeout_s=400)
    assert result["status"]["state"] == "completed"
    events = RunLedger(tmp_path / "demo" / "shared").events()
    disruptions = [{"kind": d.kind, "at": d.at, "at_step": d.at_step} for d in result["disruptions"]]
    _check(_compare(events, disruptions))
