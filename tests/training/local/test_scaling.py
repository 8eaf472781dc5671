"""The local actuator and the simulated market, without processes: a fake cluster, a scripted
ledger and a fake clock (the real-process scenario is tests/integration/test_local_scaler.py)."""

from __future__ import annotations

import json

import pytest

from tensile.config import TrainingConfig
from tensile.local.market import MarketPhase, MarketTick, ProgressMarket, SimulatedMarket
from tensile.local.scaling import LocalScaler, throughput_by_nodes, training_nodes
from tensile.scaler import ReasonKind, ScalerConfig, TeamState, Trigger, TriggerAction


class FakeCluster:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.gone: set[str] = set()
        """Nodes whose processes ended without the actuator asking (reclaimed)."""

    def start_node(self, node_id):
        self.calls.append(("start", node_id))

    def terminate(self, node_id):
        self.calls.append(("terminate", node_id))

    def is_running(self, node_id):
        return ("terminate", node_id) not in self.calls and node_id not in self.gone


class FakeLedger:
    def __init__(self):
        self.steps: list[dict] = []

    def train(self, count, *, world_size, step_s=0.5, t=0.0):
        for _ in range(count):
            self.steps.append({"event": "step", "step": len(self.steps) + 1, "world_size": world_size,
                               "step_s": step_s, "t": t})

    def events(self):
        return list(self.steps)

    def status(self):
        return None


def _round(world_size, *step_seconds):
    return [{"event": "round-start", "world_size": world_size}] + [
        {"event": "step", "world_size": world_size, "step_s": s} for s in step_seconds]


def test_throughput_by_nodes_is_the_median_of_recent_steps_per_size():
    events = _round(2, 9.0, 0.5, 0.5, 0.6, 0.7) + _round(4, 2.0, 0.25, 0.25, 0.25, 0.25)
    assert throughput_by_nodes(events, samples_per_step=12, processes_per_node=2) == {1: 12 / 0.55, 2: 48.0}
    assert training_nodes(events, processes_per_node=2) == 2
    assert training_nodes([], processes_per_node=1) == 0


def test_throughput_by_nodes_leaves_out_warm_up_steps_and_sizes_barely_trained_at():
    """A round's first step is slow (first collectives): one of them, with one other step, once
    made a third node look useless and the collapse rule shrank it."""
    events = _round(2, 0.6, 0.6, 0.6, 0.6, 0.6) + _round(3, 0.74, 0.44) + _round(3, 0.9, 0.44, 0.44, 0.44, 0.45)
    measured = throughput_by_nodes(events, samples_per_step=16, processes_per_node=1)
    assert measured == {2: 16 / 0.6, 3: 16 / 0.44}
    assert throughput_by_nodes(_round(3, 0.74, 0.44), samples_per_step=16, processes_per_node=1) == {}


def test_local_scaler_grows_on_capacity_then_sigterms_the_newest_node_at_a_price_spike():
    training = TrainingConfig()
    training.elastic.min_nodes, training.elastic.max_nodes = 1, 3
    training.run.steps = 1_000
    market = SimulatedMarket("spot", 8.0, [
        MarketTick(at_s=0, spot_usd_per_hour=2.0, spot_nodes_available=0),
        MarketTick(at_s=10, spot_usd_per_hour=2.0, spot_nodes_available=2),
        MarketTick(at_s=100, spot_usd_per_hour=50.0, spot_nodes_available=2)])
    config = ScalerConfig(cooldown_min_s=5, cooldown_recovery_multiple=1, grow_on_demand=False, triggers=(
        Trigger(action=TriggerAction.SHRINK_TO_MIN, spot_price_above_usd_per_hour=20.0, pool="spot"),))
    cluster, ledger, now, printed = FakeCluster(), FakeLedger(), [0.0], []
    scaler = LocalScaler(cluster, ledger, training=training, scaler=config, market=market.at,
                         team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6),
                         pool="spot", decide_every_s=1, progress=printed.append, clock=lambda: now[0])
    scaler.start()
    ledger.train(5, world_size=1)

    def at(t):
        now[0] = t
        return scaler.poll()

    assert at(1).kind is ReasonKind.HOLD and "no capacity" in printed[-1]
    assert at(11).kind is ReasonKind.GROW and cluster.calls[-1] == ("start", "node-1")
    assert at(12).kind is ReasonKind.HOLD and "waiting for 1 node" in printed[-1]
    ledger.train(5, world_size=2, step_s=0.3, t=14.0)  # 2 nodes formed at t=14: recovery 3 s
    assert at(20).kind is ReasonKind.GROW and cluster.calls[-1] == ("start", "node-2")
    assert scaler.recovery_s == pytest.approx(3.0)
    ledger.train(5, world_size=3, step_s=0.25, t=30.0)
    assert at(101).kind is ReasonKind.SHRINK_TRIGGER
    # Newest first (node-2, then node-1), each by SIGTERM; the oldest node keeps the run.
    assert cluster.calls == [("start", "node-0"), ("start", "node-1"), ("start", "node-2"),
                             ("terminate", "node-2"), ("terminate", "node-1")]
    assert scaler.asked == ["node-0"]
    assert scaler.spend_usd > 0
    assert len(printed) == len(scaler.log.decisions) and all("step" in line for line in printed)


def test_local_scaler_measures_a_resize_from_the_stop_not_from_the_decision():
    """The group trains on while a new node boots: only the gap from its last step at the old
    size to the first at the new one is lost, and that is what the cool-down and the pay-back
    of the next node are reckoned on."""
    training = TrainingConfig()
    training.elastic.min_nodes, training.elastic.max_nodes = 1, 3
    training.run.steps = 1_000
    market = SimulatedMarket("spot", 8.0, [MarketTick(at_s=0, spot_usd_per_hour=2.0, spot_nodes_available=2)])
    cluster, ledger, now = FakeCluster(), FakeLedger(), [0.0]
    scaler = LocalScaler(cluster, ledger, training=training, scaler=ScalerConfig(grow_on_demand=False),
                         market=market.at, pool="spot", decide_every_s=1, progress=lambda _: None,
                         team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6),
                         clock=lambda: now[0])
    scaler.start()
    ledger.train(5, world_size=1, t=0.0)
    now[0] = 1.0
    assert scaler.poll().kind is ReasonKind.GROW
    ledger.train(20, world_size=1, t=20.0)  # node-1 boots for 20 s; the group trains on
    ledger.train(5, world_size=2, t=24.0)
    now[0] = 25.0
    scaler.poll()
    assert scaler.recovery_s == pytest.approx(4.0)


def test_local_scaler_waits_for_starting_nodes_and_suspends_only_when_capacity_is_gone():
    """A node that is starting is not missing capacity: suspending it would stop every job at
    birth. A node reclaimed below the minimum is: suspend, then resume when capacity returns."""
    training = TrainingConfig()
    training.elastic.min_nodes, training.elastic.max_nodes = 1, 3
    training.run.steps = 1_000
    market = SimulatedMarket("spot", 8.0, [MarketTick(at_s=0, spot_usd_per_hour=2.0, spot_nodes_available=0),
                                           MarketTick(at_s=60, spot_usd_per_hour=2.0, spot_nodes_available=1)])
    config = ScalerConfig(cooldown_min_s=5, cooldown_recovery_multiple=1, suspend_after_s=3, grow_on_demand=False)
    cluster, ledger, now, printed = FakeCluster(), FakeLedger(), [0.0], []
    scaler = LocalScaler(cluster, ledger, training=training, scaler=config, market=market.at,
                         team=TeamState(gpu_quota=8, borrowing_limit=0, gpus_in_use=0, spend_usd=0, budget_usd=1e6),
                         pool="spot", decide_every_s=1, progress=printed.append, clock=lambda: now[0])
    scaler.start()

    def at(t):
        now[0] = t
        return scaler.poll()

    assert [at(t).kind for t in (1, 5, 20)] == [ReasonKind.HOLD] * 3, printed
    assert "to become ready" in printed[-1]
    ledger.train(5, world_size=1, t=21.0)
    assert at(22).kind is ReasonKind.HOLD and "no capacity" in printed[-1]
    cluster.gone.add("node-0")  # the cloud took it back
    assert at(30).kind is ReasonKind.HOLD and "suspending after 3 s" in printed[-1]
    assert at(34).kind is ReasonKind.SUSPEND and scaler.asked == [] and scaler.suspended
    assert at(50).kind is ReasonKind.HOLD and "offers fewer than the minimum" in printed[-1]
    assert at(61).kind is ReasonKind.RESUME and cluster.calls[-1] == ("start", "node-1")
    # The resumed node is starting; the ledger's newest step (before the suspension) is not its.
    assert scaler.observe(ledger.events(), 70).ready_nodes == 0
    assert [at(t).kind for t in (62, 70, 90)] == [ReasonKind.HOLD] * 3 and not scaler.suspended
    ledger.train(5, world_size=1, t=95.0)
    assert scaler.observe(ledger.events(), 96).ready_nodes == 1
    assert scaler.recovery_s == pytest.approx(95.0 - 61)


def test_progress_market_follows_the_run_and_reclaims_what_capacity_no_longer_holds():
    phases = [MarketPhase(name="one node", spot_usd_per_hour=2.0, spot_capacity=1, ends_after_steps=(1, 2)),
              MarketPhase(name="three", spot_usd_per_hour=2.0, spot_capacity=3, ends_after_steps=(3, 2)),
              MarketPhase(name="gone", spot_usd_per_hour=50.0, spot_capacity=0, ends_after_s=10),
              MarketPhase(name="back", spot_usd_per_hour=2.0, spot_capacity=1)]
    market = ProgressMarket("spot", 8.0, phases, seed=3)
    steps = FakeLedger()
    assert market.advance([], 0.0).name == "one node" and market.advance([], 1.0) is None
    assert market.at(held_nodes=1, step=0).spot_nodes_available == 0
    steps.train(1, world_size=1, t=2.0)
    assert market.advance(steps.events(), 3.0) is None
    steps.train(1, world_size=1, t=3.0)
    assert market.advance(steps.events(), 4.0).name == "three"
    assert market.at(held_nodes=1, step=2).spot_nodes_available == 2
    steps.train(2, world_size=2, t=5.0)  # steps at another size do not count
    assert market.advance(steps.events(), 6.0) is None
    steps.train(2, world_size=3, t=7.0)
    assert market.advance(steps.events(), 8.0).name == "gone"
    assert market.to_reclaim(held_nodes=3) == 3 and market.at(held_nodes=0, step=6).spot_nodes_available == 0
    assert market.advance(steps.events(), 17.0) is None and market.advance(steps.events(), 18.0).name == "back"
    assert market.to_reclaim(held_nodes=1) == 0 and market.advance(steps.events(), 1e6) is None  # the last holds
    prices = {market.at(held_nodes=0, step=s).spot_usd_per_hour for s in range(50)}
    assert len(prices) > 10 and all(1.94 <= p <= 2.06 for p in prices), "seeded jitter within 3 %"
    again = ProgressMarket("spot", 8.0, phases, seed=3)
    again.index = market.index
    assert [again.at(held_nodes=0, step=s) for s in range(5)] == [market.at(held_nodes=0, step=s) for s in range(5)]


def test_simulated_market_generator_is_seeded_and_moves():
    one = SimulatedMarket.generated(seed=7, pool="p", on_demand_usd_per_hour=10, spot_usd_per_hour=3,
                                    duration_s=600, tick_s=5, max_offers=3, spike_probability=0.05)
    two = SimulatedMarket.generated(seed=7, pool="p", on_demand_usd_per_hour=10, spot_usd_per_hour=3,
                                    duration_s=600, tick_s=5, max_offers=3, spike_probability=0.05)
    other = SimulatedMarket.generated(seed=8, pool="p", on_demand_usd_per_hour=10, spot_usd_per_hour=3,
                                      duration_s=600, tick_s=5, max_offers=3, spike_probability=0.05)
    assert one.ticks == two.ticks != other.ticks
    offers = [t.spot_nodes_available for t in one.ticks]
    assert 0 in offers and max(offers) > 0 and all(0 <= o <= 3 for o in offers), "offers appear and vanish"
    prices = [t.spot_usd_per_hour for t in one.ticks]
    assert len(set(prices)) > 10 and all(0 < p <= 20 for p in prices)
    assert one.at(7.0).spot_usd_per_hour == one.ticks[1].spot_usd_per_hour  # the newest tick at or before


def test_simulated_market_plays_back_an_availability_trace(tmp_path):
    trace = tmp_path / "trace.json"  # SkyPilot's spot-traces format (../shared/traces/README.md)
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": [0, 0, 3, 1]}))
    market = SimulatedMarket.from_availability_trace(trace, pool="v100", on_demand_usd_per_hour=3.06,
                                                     spot_usd_per_hour=0.92, seconds_per_gap=2.0)
    assert [market.at(t).spot_nodes_available for t in (0, 3.9, 4, 7, 60)] == [0, 0, 3, 1, 1]
    assert market.at(5).spot_usd_per_hour == 0.92 and market.at(5).on_demand_usd_per_hour == 3.06
