"""The simulator's engine, by tables of cases whose answers are worked out by hand."""

from __future__ import annotations

import time

import pytest

from tensile.scaler import ScalerConfig, TeamState
from tensile.scaler.traces import SpotTrace, generate_trace
from tensile.simulate.api import SPOT_NOTICE_S, Disruption, DisruptionKind, SimJob, SimPool, TimeCosts
from tensile.simulate.engine import simulate
from tensile.simulate.scaling import ScalerInputs

FREE = TimeCosts(node_launch_s=0, image_pull_s=0, tensile_start_s=0, recovery_unwarned_s=0, recovery_warned_s=0,
                 recovery_join_s=0, checkpoint_stall_s=0, time_to_durable_s=0, emergency_save_s=0)


def job(**changes) -> SimJob:
    fields = dict(name="j", steps=100, min_nodes=1, max_nodes=2, processes_per_node=1, samples_per_step=16,
                  step_s_by_nodes={1: 2.0, 2: 1.0}, checkpoint_every_steps=10)
    return SimJob(**{**fields, **changes})


def pool(**changes) -> SimPool:
    fields = dict(name="p", gpu_model="h100", instance_type="p5.48xlarge", on_demand_usd_per_node_hour=36.0,
                  spot_usd_per_node_hour=18.0, empty_node_linger_s=0.0)
    return SimPool(**{**fields, **changes})


@pytest.mark.parametrize("costs, completion_s, label", [
    (FREE, 100.0, "100 steps of 1 s at 2 nodes"),
    # start-up 30 s, 9 periodic stalls of 0.5 s (steps 10..90), the final save 2 s
    (FREE.__class__(**{**{f: getattr(FREE, f) for f in FREE.__slots__}, "node_launch_s": 20.0, "tensile_start_s": 10.0,
                       "checkpoint_stall_s": 0.5, "emergency_save_s": 2.0}), 30 + 100 + 9 * 0.5 + 2, "with costs"),
])
def test_simulate_without_interruptions_gives_exact_time_and_cost(costs, completion_s, label):
    result = simulate(job(), pool(spot=False), costs, initial_nodes=2)
    assert result.completed and result.completion_s == pytest.approx(completion_s), label
    assert result.cost_usd == pytest.approx(2 * 36.0 * completion_s / 3600), "two on-demand nodes, start-up billed"
    assert result.steps_replayed == 0 and result.losses == ()
    assert result.useful_s == pytest.approx(100.0)


def test_simulate_bills_the_empty_node_linger_after_the_end():
    result = simulate(job(), pool(spot=False, empty_node_linger_s=600.0), FREE, initial_nodes=2)
    assert result.cost_usd == pytest.approx(2 * 36.0 * (100 + 600) / 3600)


@pytest.mark.parametrize("at_step, every, replayed", [(15, 10, 5), (20, 10, 0), (29, 10, 9), (15, 100, 15)])
def test_simulate_unwarned_loss_replays_the_steps_since_the_durable_checkpoint(at_step, every, replayed):
    costs = FREE.__class__(**{**{f: getattr(FREE, f) for f in FREE.__slots__}, "recovery_unwarned_s": 5.0})
    result = simulate(job(checkpoint_every_steps=every), pool(spot=False), costs, initial_nodes=2,
                      schedule=[Disruption(kind=DisruptionKind.LOST_UNWARNED, at_step=at_step)])
    assert result.steps_replayed == replayed
    # at_step steps at 1 s, recovery 5 s, then the rest (100 - durable step) at 1 node, 2 s each
    assert result.completion_s == pytest.approx(at_step + 5 + (100 - (at_step - replayed)) * 2.0)
    assert [(loss.warned, loss.steps_replayed, loss.nodes_after) for loss in result.losses] == [(False, replayed, 1)]


def test_simulate_a_checkpoint_not_yet_durable_does_not_count():
    # Saved at step 10, durable 30 s later: a loss at step 15 (t = 15 s) replays from step 0.
    costs = FREE.__class__(**{**{f: getattr(FREE, f) for f in FREE.__slots__}, "time_to_durable_s": 30.0})
    result = simulate(job(), pool(spot=False), costs, initial_nodes=2,
                      schedule=[Disruption(kind=DisruptionKind.LOST_UNWARNED, at_step=15)])
    assert result.steps_replayed == 15


@pytest.mark.parametrize("save_s, replayed, warned", [(1.0, 0, True), (SPOT_NOTICE_S + 1, None, False)])
def test_simulate_warned_loss_replays_nothing_if_the_save_fits_the_notice(save_s, replayed, warned):
    costs = FREE.__class__(**{**{f: getattr(FREE, f) for f in FREE.__slots__}, "emergency_save_s": save_s})
    result = simulate(job(steps=1000, checkpoint_every_steps=1000), pool(spot=False), costs, initial_nodes=2,
                      schedule=[Disruption(kind=DisruptionKind.LOST_WARNED, at_step=15)])
    (loss,) = result.losses
    assert loss.warned is warned
    if warned:
        # the step in flight (16) ends, the save commits, the survivor goes on from 16
        assert loss.steps_replayed == 0 and result.completion_s == pytest.approx(16 + save_s + 984 * 2.0 + save_s)
    else:
        # the save cannot commit before the reclaim: the node goes unwarned at notice's end,
        # having trained on meanwhile, and every step since step 0 is replayed
        assert loss.steps_replayed == 15 + SPOT_NOTICE_S and result.steps_replayed == loss.steps_replayed


def test_simulate_falls_back_to_on_demand_when_the_trace_has_no_spot():
    no_spot = SpotTrace(300.0, (0,) * 10, "no spot")
    with_fallback = simulate(job(), pool(), FREE, trace=no_spot)
    assert with_fallback.completed and with_fallback.spot_node_hours == 0
    assert with_fallback.on_demand_node_hours == pytest.approx(2 * 100 / 3600)
    without = simulate(job(), pool(fallback_to_on_demand=False), FREE, trace=no_spot)
    assert not without.completed and without.cost_usd == 0, "no capacity ever: nothing launched, nothing done"


def test_simulate_spot_reclaimed_then_replaced_by_on_demand():
    # 2 spot nodes for the first 300 s, then 1: the newest is reclaimed (warned), on-demand replaces it
    trace = SpotTrace(300.0, (2, 1, 1, 1), "2 then 1")
    costs = FREE.__class__(**{**{f: getattr(FREE, f) for f in FREE.__slots__}, "node_launch_s": 60.0})
    result = simulate(job(steps=1000), pool(), costs, trace=trace)
    assert [loss.warned for loss in result.losses] == [True]
    assert result.joins == 1 and result.on_demand_node_hours > 0 and result.spot_node_hours > 0
    assert result.steps_replayed == 0


def test_simulate_is_seeded_and_fast():
    trace = generate_trace(">20%", seed=3, nodes=4, duration_s=60 * 86400)
    long_job = job(steps=400_000, max_nodes=4, step_s_by_nodes={1: 4.0, 2: 2.0, 3: 1.4, 4: 1.0},
                   checkpoint_every_steps=100)
    began = time.perf_counter()
    one = simulate(long_job, pool(), TimeCosts(), trace=trace, unwarned_fraction=0.5, seed=7)
    elapsed = time.perf_counter() - began
    assert one == simulate(long_job, pool(), TimeCosts(), trace=trace, unwarned_fraction=0.5, seed=7)
    assert one.completion_s > 100 * 3600, "over a hundred simulated hours"
    assert elapsed < 5, f"{elapsed:.2f} s for one seed"  # a generous ceiling on a busy machine, not a benchmark


def test_simulate_drives_the_scalers_policy_core():
    trace = SpotTrace(300.0, (3,) * 100, "3 spot nodes")
    scaler = ScalerInputs(config=ScalerConfig(cooldown_min_s=60),
                          team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6))
    result = simulate(job(steps=5000, max_nodes=3, step_s_by_nodes={1: 3.0, 2: 1.6, 3: 1.1}), pool(), FREE,
                      trace=trace, scaler=scaler)
    assert result.completed
    assert any("grow -> 2" in d for d in result.decisions) and any("grow -> 3" in d for d in result.decisions)


def test_simulate_scaler_never_asks_past_the_pools_node_limit():
    """A 3-node job on a pool whose GPU limit holds 2 nodes: the core sees the limit and holds at 2
    (before, it asked for a third that Karpenter would never launch, and gave it up each deadline)."""
    trace = SpotTrace(300.0, (3,) * 100, "3 spot nodes")
    scaler = ScalerInputs(config=ScalerConfig(cooldown_min_s=60),
                          team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6))
    result = simulate(job(steps=5000, max_nodes=3, step_s_by_nodes={1: 3.0, 2: 1.6, 3: 1.1}), pool(node_limit=2),
                      FREE, trace=trace, scaler=scaler)
    assert result.completed
    assert any("grow -> 2" in d for d in result.decisions)
    assert not any("-> 3" in d for d in result.decisions), result.decisions


def test_simulate_scaler_suspends_without_spot_and_resumes_once_when_it_returns():
    # Spot for 20 min, none for 2 h, then spot again; no on-demand growth and no fallback.
    trace = SpotTrace(300.0, (1,) * 4 + (0,) * 24 + (1,) * 200, "a two-hour gap")
    scaler = ScalerInputs(config=ScalerConfig(grow_on_demand=False),
                          team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6))
    result = simulate(job(steps=3000, max_nodes=1, step_s_by_nodes={1: 2.0}), pool(fallback_to_on_demand=False),
                      TimeCosts(node_launch_s=30, image_pull_s=30, tensile_start_s=10), trace=trace, scaler=scaler)
    assert result.completed
    kinds = [d.split(": ", 1)[1].split(" ")[0] for d in result.decisions]
    assert kinds == ["suspend", "resume"], result.decisions  # a resumed job's nodes get time to start
