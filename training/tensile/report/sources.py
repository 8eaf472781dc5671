"""Where a report's events come from: a run's ledger (a run directory, its ledger directory, or
a directory with the run's config.yaml), or, for an `s3://` shared tier, its commit log; and the
prices file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensile.config import ConfigError, load_config
from tensile.elastic.ledger import RunLedger
from tensile.report.figures import Event, Prices


class ReportSourceError(ValueError):
    """A run or prices file the report cannot read (the message says what to pass instead)."""


@dataclass(frozen=True, slots=True)
class RunEvents:
    label: str
    events: list[Event]
    notes: list[str] = field(default_factory=list)
    """What the source could not show (a commit log holds no losses or disruptions)."""


def _is_ledger(directory: Path) -> bool:
    return (directory / "events").is_dir() or (directory / "events.jsonl").is_file()


def load_run(location: str) -> RunEvents:
    """The events of the run at `location`: a ledger directory (events/ or the older events.jsonl),
    a run directory holding one in shared/ or naming one in its config.yaml, or a shared tier
    (a directory or s3://) with only its commit log."""
    if location.startswith("s3://"):
        return commit_log_events(location)
    path = Path(location)
    if not path.is_dir():
        raise ReportSourceError(f"{location} is not a directory or an s3:// URL: pass a run directory, "
                                f"its ledger directory (checkpoint.ledger_dir) or its shared tier")
    for candidate in (path, path / "shared"):
        if _is_ledger(candidate):
            return RunEvents(str(path), RunLedger(candidate).events())
    if (path / "config.yaml").is_file():
        try:
            ledger = Path(load_config(path / "config.yaml").checkpoint.ledger_path)
        except ConfigError as e:
            raise ReportSourceError(f"{path / 'config.yaml'} does not load: {e}") from e
        if _is_ledger(ledger):
            return RunEvents(str(path), RunLedger(ledger).events())
    if (path / "commits").is_dir():
        return commit_log_events(str(path))
    raise ReportSourceError(f"{location} holds no ledger (events/), no config.yaml naming one and no commit "
                            f"log (commits/): pass the run's checkpoint.ledger_dir or shared_dir")


def commit_log_events(shared_dir: str) -> RunEvents:
    """A tier's commits as ledger-like events: a round-start per publishing group and a checkpoint
    per commit whose manifest is kept (retention deletes older ones), timed by the manifests.
    The ledger (losses, disruptions, stalls) lives in checkpoint.ledger_dir, a directory."""
    from tensile.checkpoint.tools import list_checkpoints

    rows = [row for row in reversed(list_checkpoints(shared_dir, verify=False)) if row.manifest is not None]
    events: list[Event] = []
    group = None
    for row in rows:
        manifest = row.manifest
        token = row.checkpoint_id.rsplit("-", 1)[-1]
        if token != group:
            group = token
            events.append({"t": manifest.created_at, "event": "round-start", "world_size": manifest.world_size,
                           "resumed_step": manifest.step, "round": len([e for e in events
                                                                         if e["event"] == "round-start"]) + 1})
        events.append({"t": manifest.created_at, "event": "checkpoint", "step": manifest.step,
                       "reason": manifest.reason, "stall_s": 0.0, "bytes": row.size_bytes})
    notes = [f"{shared_dir} is a shared tier: read from its commit log, which keeps the {len(rows)} checkpoint(s) "
             f"retention left and no losses, disruptions or save timings. For the full report pass the run's "
             f"ledger directory (checkpoint.ledger_dir)."]
    return RunEvents(shared_dir, sorted(events, key=lambda e: e["t"]), notes)


def load_prices(path: Path) -> Prices:
    """A YAML or JSON file: `usd_per_node_hour: 1.2`, or a pool's price among several
    (`pools: {spot-g5: 0.45, on-demand-g5: 1.21}` with `pool: spot-g5`); optionally
    `processes_per_node` (default 1), to count nodes from world sizes."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportSourceError(f"prices file {path} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise ReportSourceError(f"prices file {path} must be a mapping, got {json.dumps(data)[:80]}")
    problems = []
    known = {"usd_per_node_hour", "pools", "pool", "processes_per_node"}
    problems += [f"{key}: unknown key; known keys: {', '.join(sorted(known))}" for key in data if key not in known]
    price, label = data.get("usd_per_node_hour"), ""
    if "pools" in data:
        pools, pool = data["pools"], data.get("pool")
        if not isinstance(pools, dict) or pool not in pools:
            problems.append(f"pool: must name one of pools ({', '.join(map(str, pools)) if isinstance(pools, dict) else pools}), "
                            f"got {pool!r}")
        else:
            price, label = pools[pool], str(pool)
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        problems.append(f"usd_per_node_hour: must be a price >= 0 in USD (or pools and pool), got {price!r}")
    processes = data.get("processes_per_node", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes <= 0:
        problems.append(f"processes_per_node: must be a positive integer, got {processes!r}")
    if problems:
        raise ReportSourceError(f"prices file {path}: " + "; ".join(problems))
    return Prices(float(price), processes, label or f"{price} USD per node-hour")


CAPACITIES = ("spot", "on-demand")


def stack_prices(pool: dict[str, Any], *, processes_per_node: int, capacity: str | None = None) -> Prices:
    """A stack pool's price per node, as `tensile simulate` reads it from the stack's price book
    (infra/tools/simulation_inputs.py): the node type Karpenter picks for the job, at its spot
    price in a spot pool (an estimate: spot prices move, and a fallback to on-demand costs more)
    or at its on-demand price; `capacity` chooses. Processes per node: the job's GPUs per node."""
    if capacity not in (None, *CAPACITIES):
        raise ReportSourceError(f"capacity: must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
    spot = pool["spot"] if capacity is None else capacity == "spot"
    price = pool["spot_usd_per_node_hour"] if spot else pool["on_demand_usd_per_node_hour"]
    kind = "spot (assumed discount)" if spot else "on-demand"
    return Prices(float(price), processes_per_node,
                  f"pool {pool['name']}: {pool['instance_type']} {kind} at {price:.2f} USD per node-hour; "
                  f"{pool['price_source']}")

