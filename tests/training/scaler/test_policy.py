"""The scaler's policy core, by tables: every rule, trigger, hysteresis, cool-down, budget,
priority, and suspend/resume below the minimum (docs/design/scaler.md)."""

from __future__ import annotations

import dataclasses

import pytest

from tensile.scaler import (JobState, PendingWorkload, PoolMarket, ReasonKind, ScalerConfig, TeamState,
                            decide, load_scaler_config)

NOW = 100_000.0
# Two nodes at 190 samples/s (one gave 100); a 10 000-step run of 64 samples a step; a resize
# recovers in 30 s. The team has 32 + 8 GPUs and uses 16; spot A100 nodes at $12/h, 3 on offer.
JOB = JobState(name="llm-7b", pool="a100", min_nodes=1, max_nodes=4, current_nodes=2, ready_nodes=2,
               gpus_per_node=8, samples_per_s_by_nodes={1: 100.0, 2: 190.0}, steps_left=10_000,
               samples_per_step=64, recovery_s=30.0)
TEAM = TeamState(gpu_quota=32, borrowing_limit=8, gpus_in_use=16, spend_usd=1_000.0, budget_usd=10_000.0)
POOL = PoolMarket(pool="a100", on_demand_usd_per_hour=32.0, spot_usd_per_hour=12.0, spot_nodes_available=3)
PRICE_TRIGGER = {"triggers": [{"action": "shrink_to_min", "spot_price_above_usd_per_hour": 20.0, "pool": "a100"}]}
QUEUE_TRIGGER = {"triggers": [{"action": "grow", "team_queue_empty": True, "spend_below_fraction": 0.5}]}
LOW_PRIORITY = (PendingWorkload(name="eval", priority=-1, gpus=8),)
HIGH_PRIORITY = (PendingWorkload(name="prod-finetune", priority=5, gpus=8),)


def case(kind, nodes, *, job=None, team=None, pool=None, config=None, text=""):
    return pytest.param(job or {}, team or {}, pool or {}, config or {}, kind, nodes, text,
                        id=f"{kind.value}-{nodes}-{text or 'base'}")


CASES = [
    # Growing: quota, capacity, budget and throughput per dollar all allow one more node.
    case(ReasonKind.GROW, 3, text="spot"),
    case(ReasonKind.HOLD, 4, job={"current_nodes": 4, "ready_nodes": 4,
                                  "samples_per_s_by_nodes": {3: 270.0, 4: 350.0}}, text="maximum"),
    case(ReasonKind.HOLD, 2, team={"gpus_in_use": 40}, text="quota"),
    case(ReasonKind.GROW, 3, team={"gpus_in_use": 32}, text="borrowing"),
    case(ReasonKind.HOLD, 2, pool={"spot_nodes_available": 0}, config={"grow_on_demand": False},
         text="no capacity"),
    case(ReasonKind.HOLD, 2, pool={"spot_nodes_available": 0}, text="on-demand node too dear per sample"),
    case(ReasonKind.GROW, 3, pool={"spot_nodes_available": 0, "reserved_nodes_free": 1}, text="reserved"),
    # The NodePool's GPU limit: Karpenter launches no third 8-GPU node under 16 GPUs.
    case(ReasonKind.HOLD, 2, pool={"gpu_limit": 16}, text="pool at its GPU limit"),
    case(ReasonKind.GROW, 3, pool={"gpu_limit": 24}, text="pool limit room for one more"),
    case(ReasonKind.HOLD, 2, pool={"spot_nodes_available": None}, config={"grow_on_demand": False},
         text="spot availability unknown is not counted on"),
    case(ReasonKind.HOLD, 2, job={"samples_per_s_by_nodes": {}}, text="no throughput measured"),
    case(ReasonKind.HOLD, 2, job={"samples_per_s_by_nodes": {2: 190.0, 3: 185.0}}, text="measured no faster"),
    case(ReasonKind.GROW, 3, job={"samples_per_s_by_nodes": {2: 190.0, 3: 250.0}}, text="measured faster"),
    case(ReasonKind.HOLD, 2, job={"steps_left": 10}, text="too few steps left to repay the recovery"),
    # Budget: grow below 80 %, shrink to the minimum from 95 %, hold between (hysteresis).
    case(ReasonKind.SHRINK_BUDGET, 1, team={"spend_usd": 9_600.0}, text="budget"),
    case(ReasonKind.HOLD, 2, team={"spend_usd": 8_500.0}, text="budget hysteresis"),
    case(ReasonKind.HOLD, 2, team={"spend_usd": 7_995.0}, text="extra node's cost does not fit"),
    case(ReasonKind.HOLD, 1, job={"current_nodes": 1, "ready_nodes": 1}, team={"spend_usd": 9_600.0},
         text="at budget and already at minimum"),
    # Priority: higher-priority work waiting for quota takes ours; lower-priority work does not.
    case(ReasonKind.SHRINK_PRIORITY, 2, job={"current_nodes": 3, "ready_nodes": 3}, team={
        "gpus_in_use": 40, "pending": HIGH_PRIORITY}, text="higher priority waits"),
    case(ReasonKind.HOLD, 3, job={"current_nodes": 3, "ready_nodes": 3,
                                  "samples_per_s_by_nodes": {2: 190.0, 3: 275.0}},
         team={"gpus_in_use": 40, "pending": LOW_PRIORITY}, text="lower priority waits"),
    case(ReasonKind.HOLD, 2, team={"gpus_in_use": 32, "pending": HIGH_PRIORITY},
         text="never grow into quota higher priority needs"),
    case(ReasonKind.HOLD, 1, job={"current_nodes": 1, "ready_nodes": 1},
         team={"gpus_in_use": 40, "pending": HIGH_PRIORITY}, text="higher priority but at minimum"),
    # Triggers as data: a price ceiling with hysteresis; a grow gate on the queue and spend.
    case(ReasonKind.SHRINK_TRIGGER, 1, pool={"spot_usd_per_hour": 25.0}, config=PRICE_TRIGGER, text="price spike"),
    case(ReasonKind.HOLD, 2, pool={"spot_usd_per_hour": 19.0}, config=PRICE_TRIGGER, text="price hysteresis"),
    case(ReasonKind.GROW, 3, pool={"spot_usd_per_hour": 17.0}, config=PRICE_TRIGGER, text="price back down"),
    case(ReasonKind.GROW, 3, pool={"spot_usd_per_hour": None, "spot_nodes_available": 0,
                                   "reserved_nodes_free": 1}, config=PRICE_TRIGGER,
         text="unknown price neither shrinks nor blocks"),
    case(ReasonKind.HOLD, 2, team={"pending": LOW_PRIORITY}, config=QUEUE_TRIGGER, text="queue not empty"),
    case(ReasonKind.HOLD, 2, team={"spend_usd": 6_000.0}, config=QUEUE_TRIGGER, text="spend above gate"),
    case(ReasonKind.GROW, 3, team={"spend_usd": 4_000.0}, config=QUEUE_TRIGGER, text="gate holds"),
    # Throughput per node collapses: the last node is given back.
    case(ReasonKind.SHRINK_COLLAPSE, 2, job={"current_nodes": 3, "ready_nodes": 3,
                                             "samples_per_s_by_nodes": {2: 190.0, 3: 200.0}}, text="collapse"),
    # Cool-down: max(300 s, 5 x the measured recovery); safety shrinks ignore it.
    case(ReasonKind.HOLD, 2, job={"last_resize_at_s": NOW - 100}, text="cool-down floor"),
    case(ReasonKind.GROW, 3, job={"last_resize_at_s": NOW - 400}, text="cool-down passed"),
    case(ReasonKind.HOLD, 2, job={"last_resize_at_s": NOW - 400, "recovery_s": 120.0},
         text="cool-down from a slow recovery"),
    case(ReasonKind.SHRINK_BUDGET, 1, job={"last_resize_at_s": NOW - 10}, team={"spend_usd": 9_600.0},
         text="budget ignores cool-down"),
    case(ReasonKind.SHRINK_TRIGGER, 1, job={"last_resize_at_s": NOW - 10}, pool={"spot_usd_per_hour": 25.0},
         config=PRICE_TRIGGER, text="price spike ignores cool-down"),
    # Nodes asked for that never become ready: wait, then give them back (Kueue's pods-ready guard).
    case(ReasonKind.HOLD, 3, job={"current_nodes": 3, "unready_since_s": NOW - 100}, text="waiting for ready"),
    case(ReasonKind.SHRINK_NOT_READY, 2, job={"current_nodes": 3, "unready_since_s": NOW - 700},
         text="ready deadline"),
    # Below the minimum: wait, then suspend (quota released); resume when capacity returns.
    case(ReasonKind.HOLD, 2, job={"min_nodes": 2, "ready_nodes": 1, "below_min_since_s": NOW - 100},
         text="below minimum, waiting"),
    case(ReasonKind.SUSPEND, 0, job={"min_nodes": 2, "ready_nodes": 1, "below_min_since_s": NOW - 700},
         text="below minimum too long"),
    case(ReasonKind.RESUME, 2, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0,
                                    "last_resize_at_s": NOW - 1_000}, text="capacity back"),
    case(ReasonKind.HOLD, 0, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0},
         pool={"spot_nodes_available": 1}, config={"grow_on_demand": False}, text="capacity short of minimum"),
    case(ReasonKind.HOLD, 0, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0},
         team={"gpus_in_use": 32}, text="quota short of minimum"),
    case(ReasonKind.HOLD, 0, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0,
                                  "last_resize_at_s": NOW - 10}, text="just suspended"),
    case(ReasonKind.HOLD, 0, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0},
         team={"spend_usd": 8_500.0}, text="resume waits for budget"),
    case(ReasonKind.HOLD, 0, job={"min_nodes": 2, "suspended": True, "current_nodes": 0, "ready_nodes": 0},
         pool={"spot_usd_per_hour": 19.0}, config=PRICE_TRIGGER, text="resume waits for price hysteresis"),
]


@pytest.mark.parametrize(("job", "team", "pool", "config", "kind", "nodes", "text"), CASES)
def test_decide_table(job, team, pool, config, kind, nodes, text):
    decision = decide(dataclasses.replace(JOB, **job), dataclasses.replace(TEAM, **team),
                      {"a100": dataclasses.replace(POOL, **pool)}, load_scaler_config(config), now_s=NOW)
    assert (decision.kind, decision.desired_nodes) == (kind, nodes), str(decision)
    assert decision.reason  # every decision says why


def test_decide_does_not_flap_when_the_price_wavers_at_its_ceiling():
    """A spot price hovering around a $20 ceiling: one shrink, then no resize until the price is
    10 % below the ceiling and the cool-down has passed."""
    config = load_scaler_config(PRICE_TRIGGER)
    job, now, sizes = JOB, NOW, []
    for price in (21.0, 19.5, 20.5, 19.0, 18.5, 17.5, 17.5):
        now += 120
        decision = decide(job, TEAM, {"a100": dataclasses.replace(POOL, spot_usd_per_hour=price)}, config, now_s=now)
        if decision.desired_nodes != job.current_nodes:
            job = dataclasses.replace(job, current_nodes=decision.desired_nodes, ready_nodes=decision.desired_nodes,
                                      last_resize_at_s=now)
        sizes.append((price, decision.kind, job.current_nodes))
    assert [kind for _, kind, _ in sizes] == [ReasonKind.SHRINK_TRIGGER] + [ReasonKind.HOLD] * 4 + [
        ReasonKind.GROW, ReasonKind.HOLD], sizes
    assert [nodes for *_, nodes in sizes] == [1, 1, 1, 1, 1, 2, 2], sizes


def test_decide_cooldown_follows_the_measured_recovery_time():
    config = ScalerConfig(cooldown_min_s=60, cooldown_recovery_multiple=4)
    for recovery_s, waited_s, expected in ((10, 70, ReasonKind.GROW), (30, 70, ReasonKind.HOLD),
                                           (30, 130, ReasonKind.GROW)):
        job = dataclasses.replace(JOB, recovery_s=recovery_s, last_resize_at_s=NOW - waited_s)
        assert decide(job, TEAM, {"a100": POOL}, config, now_s=NOW).kind is expected, (recovery_s, waited_s)


def test_job_state_refuses_what_no_actuator_should_report():
    with pytest.raises(ValueError) as raised:
        dataclasses.replace(JOB, min_nodes=3, max_nodes=2, ready_nodes=3, gpus_per_node=0)
    message = str(raised.value)
    for part in ("min_nodes <= max_nodes", "ready_nodes 3 outside 0..current_nodes 2", "gpus_per_node must be >= 1"):
        assert part in message, message


def test_decide_below_minimum_waits_for_starting_nodes_without_a_suspend_countdown():
    """Nodes placed and starting (no `below_min_since_s`) lack no capacity: hold, and say so."""
    starting = dataclasses.replace(JOB, min_nodes=2, ready_nodes=0)
    decision = decide(starting, TEAM, {"a100": POOL}, ScalerConfig(), now_s=NOW)
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.HOLD, 2)
    assert "to become ready" in decision.reason and "suspend" not in decision.reason, decision.reason
