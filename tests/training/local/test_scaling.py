"""The local actuator and the simulated market, without processes: a fake cluster, a scripted
ledger and a fake clock (the real-process scenario is tests/integration/test_local_scaler.py)."""

from __future__ import annotations

import json

import pytest

from tensile.config import TrainingConfig
from tensile.local.market import MarketTick, SimulatedMarket
from tensile.local.scaling import LocalScaler, throughput_by_nodes, training_nodes
from tensile.scaler import ReasonKind, ScalerConfig, TeamState, Trigger, TriggerAction


class FakeCluster:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def start_node(self, node_id):
        self.calls.append(("start", node_id))

    def terminate(self, node_id):
        self.calls.append(("terminate", node_id))


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


def test_throughput_by_nodes_is_the_median_of_recent_steps_per_size():
    events = [{"event": "step", "world_size": 2, "step_s": s} for s in (9.0, 0.5, 0.5, 0.6)] + [
        {"event": "round-start", "world_size": 4}, {"event": "step", "world_size": 4, "step_s": 0.25}]
    assert throughput_by_nodes(events, samples_per_step=12, processes_per_node=2) == {1: 12 / 0.55, 2: 48.0}
    assert training_nodes(events, processes_per_node=2) == 2
    assert training_nodes([], processes_per_node=1) == 0


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
