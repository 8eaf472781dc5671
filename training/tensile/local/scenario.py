"""`tensile demo --scenario market`: the scaler's policy core sizing the demo job against a
scripted spot market, then the final weights compared with an undisturbed run of the same job.

The job grows 1 → 2 → 3 when spot capacity appears, shrinks to its minimum at a price spike
(SIGTERM: the agreed stop saves first), is suspended when the cloud reclaims its last node and
resumed when capacity returns (docs/design/scaler.md).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tensile.elastic.ledger import RunLedger
from tensile.local.cluster import LocalCluster, last_step
from tensile.local.demo import Disruption, against_reference, prepare_run, run_reference, summarize
from tensile.local.market import MarketPhase, ProgressMarket
from tensile.local.scaling import LocalScaler
from tensile.scaler import ReasonKind, TeamState, load_scaler_config
from tensile.testing.faults import STEP_WORK_VARIABLE

POOL = "cpu-spot"
ON_DEMAND_USD_PER_HOUR = 8.0
SPIKE_THRESHOLD_USD_PER_HOUR = 20.0

WEIGHT_TOLERANCE = 1e-5
"""Largest absolute final-weight difference from the undisturbed run that still passes, over
every weight (the exactness tests' tolerance)."""

# Keyed on the run's progress: each phase ends after steps trained at a size, so the story is
# the same however busy the machine is; only the phase in which the job cannot train is timed.
MARKET_SCRIPT = (
    MarketPhase(name="no spot capacity beyond the job's first node", spot_usd_per_hour=2.0,
                spot_capacity=1, ends_after_steps=(1, 4)),
    MarketPhase(name="spot capacity appears: 3 nodes at ~$2/h", spot_usd_per_hour=2.0,
                spot_capacity=3, ends_after_steps=(3, 4)),
    MarketPhase(name="price spike: spot at ~$50/h", spot_usd_per_hour=50.0,
                spot_capacity=3, ends_after_steps=(1, 4)),
    MarketPhase(name="capacity vanishes: the pool has no spot node left", spot_usd_per_hour=50.0,
                spot_capacity=0, ends_after_s=10.0),
    MarketPhase(name="capacity returns: 1 spot node at ~$2/h", spot_usd_per_hour=2.0, spot_capacity=1),
)

SCALER = {
    # Short for a demo (a cluster would wait minutes): a cool-down of half the measured recovery,
    # at least 5 s; suspend 3 s below the minimum.
    "cooldown_min_s": 5, "cooldown_recovery_multiple": 0.5, "suspend_after_s": 3, "grow_on_demand": False,
    "triggers": [{"action": "shrink_to_min", "spot_price_above_usd_per_hour": SPIKE_THRESHOLD_USD_PER_HOUR,
                  "pool": POOL}],
}

STEP_WORK_S = 0.8
"""Simulated compute per step, split over the workers: on a few shared CPU cores more workers
are not faster (they share the cores), so without it the policy would see no gain in growing."""


@dataclass(frozen=True, slots=True)
class Reclaim:
    node: str
    at: float
    at_step: int


class SpotCloud:
    """The market's side of the scenario: advances the script with the run's progress, and
    reclaims the job's newest running nodes (SIGTERM, as a spot interruption's drain does)
    when the pool's capacity falls below what the job holds."""

    def __init__(self, market: ProgressMarket, cluster: LocalCluster, ledger: RunLedger,
                 progress: Callable[[str], None]):
        self.market, self.cluster, self.ledger, self.progress = market, cluster, ledger, progress
        self.scaler: LocalScaler | None = None
        self.reclaimed: list[Reclaim] = []
        self.phases_began: list[tuple[str, float]] = []
        self.started_at = time.time()

    def held_nodes(self) -> list[str]:
        """The job's running nodes the cloud has not taken back yet (a reclaimed node runs on
        while it saves; one SIGTERM each: a second would cut torchrun's graceful stop short)."""
        asked = self.scaler.asked if self.scaler else []
        taken = {r.node for r in self.reclaimed}
        return [node_id for node_id in asked if self.cluster.is_running(node_id) and node_id not in taken]

    def pool(self, elapsed_s: float):
        """What the scaler sees (its market callable)."""
        return self.market.at(held_nodes=len(self.held_nodes()), step=last_step(self.ledger.events()))

    def tick(self) -> None:
        events, now = self.ledger.events(), time.time()
        phase = self.market.advance(events, now)
        if phase is not None:
            self.phases_began.append((phase.name, now))
            self.progress(f"t+{now - self.started_at:6.1f}s step {last_step(events):4d} market: {phase.name}")
        held = self.held_nodes()
        for node_id in reversed(held[len(held) - self.market.to_reclaim(len(held)):]):
            self.cluster.terminate(node_id)
            self.reclaimed.append(Reclaim(node_id, now, last_step(events)))
            self.progress(f"t+{now - self.started_at:6.1f}s step {last_step(events):4d} cloud: {node_id} "
                          f"reclaimed (SIGTERM, as a spot interruption's drain): the agreed stop saves first")


def run_market_scenario(run_dir: Path, *, progress: Callable[[str], None] = print, timeout_s: float = 900,
                        step_work_s: float = STEP_WORK_S, seed: int = 18) -> dict[str, Any]:
    started = time.time()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config_path, config = prepare_run(run_dir)
    ledger = RunLedger(config.checkpoint.ledger_path)
    scaler_config = load_scaler_config(SCALER)
    market = ProgressMarket(POOL, ON_DEMAND_USD_PER_HOUR, MARKET_SCRIPT, seed=seed,
                            processes_per_node=config.elastic.processes_per_node)
    team = TeamState(gpu_quota=4, borrowing_limit=0, gpus_in_use=0, spend_usd=0.0, budget_usd=1_000.0)
    progress(f"simulated compute: each step costs {step_work_s:.1f} s of work split over the workers "
             f"({STEP_WORK_VARIABLE}), so 2 and 3 nodes are really faster on this host's few cores; the "
             f"reference run has none (it changes the timing, not the arithmetic)")
    progress(f"scaler: nodes {config.elastic.min_nodes}..{config.elastic.max_nodes}, pool {POOL} (spot only), "
             f"shrink to the minimum above ${SPIKE_THRESHOLD_USD_PER_HOUR:.0f}/h, cool-down max("
             f"{SCALER['cooldown_min_s']} s, {SCALER['cooldown_recovery_multiple']} x recovery), suspend "
             f"{SCALER['suspend_after_s']} s below the minimum")
    env = {STEP_WORK_VARIABLE: str(step_work_s), "TENSILE_FAULTS_DIR": str(run_dir / "faults")}
    with LocalCluster(run_dir, config_path, env=env) as cluster:
        cluster.start_store()
        cloud = SpotCloud(market, cluster, ledger, progress)
        actuator = LocalScaler(cluster, ledger, training=config, scaler=scaler_config, market=cloud.pool,
                               team=team, pool=POOL, decide_every_s=0.5, progress=progress)
        cloud.scaler = actuator
        if not actuator.run(timeout_s, on_poll=cloud.tick):
            raise TimeoutError(f"the scenario did not finish in {timeout_s} s; logs in {run_dir / 'logs'}")
        exit_codes = {node_id: node.process.returncode for node_id, node in cluster.nodes.items()}
    scenario_s = time.time() - started
    progress(f"scenario finished in {scenario_s:.0f} s; now the undisturbed reference run (1 node, no simulated compute)")
    reference_shared = run_reference(config_path, config, run_dir, timeout_s)
    stops = [Disruption(f"{decision.kind.value} -> {decision.desired_nodes}", "", actuator.started_at + elapsed, step)
             for elapsed, step, decision in actuator.log.decisions if decision.kind is not ReasonKind.HOLD]
    stops += [Disruption("reclaimed", r.node, r.at, r.at_step) for r in cloud.reclaimed]
    summary = summarize(ledger.events(), sorted(stops, key=lambda d: d.at))
    comparison = against_reference(summary, Path(config.checkpoint.shared_dir), reference_shared)
    return {
        "summary": summary, "status": ledger.status(), "decisions": actuator.log.decisions,
        "exit_codes": exit_codes, "failures_spent": ledger.failures_spent(), **comparison,
        "weight_tolerance": WEIGHT_TOLERANCE, "scenario_s": scenario_s, "total_s": time.time() - started,
        "run_dir": run_dir,
    }
