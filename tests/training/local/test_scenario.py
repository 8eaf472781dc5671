"""The market scenario's simulated cloud, without processes (the whole scenario on real processes
is tests/integration/test_market_scenario.py)."""

from __future__ import annotations

from types import SimpleNamespace

from tensile.local.market import MarketPhase, ProgressMarket
from tensile.local.scenario import MARKET_SCRIPT, SpotCloud


class SavingCluster:
    """Nodes go on running after SIGTERM, as a node saving its agreed-stop checkpoint does."""

    def __init__(self):
        self.terminated: list[str] = []

    def terminate(self, node_id):
        self.terminated.append(node_id)

    def is_running(self, node_id):
        return True


class NoSteps:
    def events(self):
        return []


def test_spot_cloud_reclaims_a_node_once_while_it_saves():
    """A second SIGTERM to a node still saving cuts torchrun's graceful stop short: the stop's
    checkpoint is lost and the steps since the last one are replayed (seen in the scenario)."""
    market = ProgressMarket("cpu-spot", 8.0, [
        MarketPhase(name="three", spot_usd_per_hour=2.0, spot_capacity=3, ends_after_s=0.0),
        MarketPhase(name="one", spot_usd_per_hour=2.0, spot_capacity=1)], seed=1)
    cluster, printed = SavingCluster(), []
    cloud = SpotCloud(market, cluster, NoSteps(), printed.append)
    cloud.scaler = SimpleNamespace(asked=["node-0", "node-1", "node-2"])
    for _ in range(4):
        cloud.tick()
    assert cluster.terminated == ["node-2", "node-1"], "the newest two, each once"
    assert [r.node for r in cloud.reclaimed] == ["node-2", "node-1"]
    assert cloud.held_nodes() == ["node-0"]
    assert cloud.pool(0.0).spot_nodes_available == 0
    assert sum("reclaimed" in line for line in printed) == 2


def test_market_script_tells_the_scenario_in_order():
    assert [p.spot_capacity for p in MARKET_SCRIPT] == [1, 3, 3, 0, 1]
    assert [p.spot_usd_per_hour > 20.0 for p in MARKET_SCRIPT] == [False, False, True, True, False]
    assert MARKET_SCRIPT[-1].ends_after_steps is None and MARKET_SCRIPT[-1].ends_after_s is None
