"""The scaler's typed config section: tunables and triggers as data, validated once.

Every problem in the section is reported together, each with its property path and the fix
(the same `ConfigError` the training config raises).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tensile.config import ConfigError


class TriggerAction(enum.Enum):
    GROW = "grow"
    """A gate: when any grow trigger is configured, growing needs one whose conditions all hold."""
    SHRINK_TO_MIN = "shrink_to_min"
    """Fires when all its conditions hold: the job goes to its minimum."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Trigger:
    """One rule; its conditions all hold (AND) or it does not apply. Unset conditions are absent."""
    action: TriggerAction
    team_queue_empty: bool = False
    """No workload waits in the team's queue."""
    spend_below_fraction: float | None = None
    """Month-to-date spend below this fraction of the team's budget."""
    spend_above_fraction: float | None = None
    spot_price_above_usd_per_hour: float | None = None
    """The spot price per node of `pool` above this (an unknown price never satisfies it)."""
    spot_price_below_usd_per_hour: float | None = None
    pool: str | None = None
    """The NodePool whose price the price conditions read; required with them."""


PRICE_CONDITIONS = ("spot_price_above_usd_per_hour", "spot_price_below_usd_per_hour")
FRACTION_CONDITIONS = ("spend_below_fraction", "spend_above_fraction")
CONDITIONS = ("team_queue_empty",) + FRACTION_CONDITIONS + PRICE_CONDITIONS


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalerConfig:
    cooldown_min_s: float = 300.0
    """No resize sooner than this after the last one, whatever the recovery time."""
    cooldown_recovery_multiple: float = 5.0
    """...nor sooner than this many measured recovery times: each resize stops the group once."""
    suspend_after_s: float = 600.0
    """A job below its minimum this long is suspended (its quota released)."""
    grow_ready_deadline_s: float = 600.0
    """Nodes asked for but not ready this long after a resize are given up (shrink to the ready
    count). In a cluster, keep it below Kueue's waitForPodsReady timeout, which would evict the
    whole job for a scale-up slice whose pods never became ready."""
    grow_below_budget_fraction: float = 0.8
    """Grow only while month-to-date spend is below this fraction of the team's budget."""
    shrink_at_budget_fraction: float = 0.95
    """Shrink to the minimum from this fraction on (above the grow fraction: hysteresis)."""
    min_marginal_efficiency: float = 0.5
    """Grow only if the next node's samples/s per dollar is at least this fraction of the
    job's current samples/s per dollar."""
    collapse_fraction: float = 0.25
    """Shrink by one when the last node added brings less than this fraction of the job's
    average throughput per node."""
    assumed_scaling_efficiency: float = 0.9
    """For a node count never measured: the next node adds this fraction of the current
    average per node."""
    price_hysteresis_fraction: float = 0.1
    """After a price or spend trigger's threshold, growing waits until the value is this
    fraction back on the safe side of it."""
    grow_on_demand: bool = True
    """The next node may be on-demand when no spot or reserved node is on offer."""
    triggers: tuple[Trigger, ...] = ()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_POSITIVE = ("cooldown_min_s", "cooldown_recovery_multiple", "suspend_after_s", "grow_ready_deadline_s")
_FRACTIONS = ("grow_below_budget_fraction", "shrink_at_budget_fraction", "min_marginal_efficiency",
              "collapse_fraction", "assumed_scaling_efficiency", "price_hysteresis_fraction")


def _trigger(data: Any, path: str, problems: list[tuple[str, str]]) -> Trigger | None:
    if not isinstance(data, Mapping):
        problems.append((path, f"must be a mapping with `action` and conditions, got {data!r}"))
        return None
    known = {f.name for f in fields(Trigger)}
    for key in data:
        if key not in known:
            problems.append((f"{path}.{key}", f"unknown key; known keys: {', '.join(sorted(known))}"))
    before = len(problems)
    actions = [a.value for a in TriggerAction]
    action = data.get("action")
    if action not in actions:
        problems.append((f"{path}.action", f"must be one of {', '.join(actions)}, got {action!r}"))
    if not any(data.get(c) not in (None, False) for c in CONDITIONS):
        problems.append((path, f"has no condition; give at least one of {', '.join(CONDITIONS)}"))
    if data.get("team_queue_empty") not in (None, True):
        problems.append((f"{path}.team_queue_empty", f"must be true or left out, got {data['team_queue_empty']!r}"))
    for name in FRACTION_CONDITIONS:
        value = data.get(name)
        if value is not None and (not _number(value) or not 0 < value <= 1.5):
            problems.append((f"{path}.{name}", f"must be a fraction of the budget in (0, 1.5], got {value!r}"))
    for name in PRICE_CONDITIONS:
        value = data.get(name)
        if value is not None and (not _number(value) or value <= 0):
            problems.append((f"{path}.{name}", f"must be a price per node-hour > 0, got {value!r}"))
    has_price = any(data.get(name) is not None for name in PRICE_CONDITIONS)
    pool = data.get("pool")
    if has_price and (not isinstance(pool, str) or not pool):
        problems.append((f"{path}.pool", "a price condition needs the NodePool whose price it reads: set `pool`"))
    if pool is not None and not has_price:
        problems.append((f"{path}.pool", "only price conditions read a pool: remove it or add a spot_price condition"))
    for low, high in (("spend_below_fraction", "spend_above_fraction"),
                      ("spot_price_below_usd_per_hour", "spot_price_above_usd_per_hour")):
        below, above = data.get(low), data.get(high)
        if _number(below) and _number(above) and below <= above:
            problems.append((path, f"{low} {below} <= {high} {above}: both can never hold; "
                                   f"the trigger would never fire"))
    if len(problems) > before:
        return None
    return Trigger(action=TriggerAction(action), **{k: v for k, v in data.items() if k != "action"})


def load_scaler_config(data: Any, *, path: str = "scaler") -> ScalerConfig:
    """The scaler section from parsed YAML/JSON; raises ConfigError listing every problem."""
    if data is None:
        return ScalerConfig()
    problems: list[tuple[str, str]] = []
    if not isinstance(data, Mapping):
        raise ConfigError([(path, f"must be a mapping, got {data!r}")])
    known = {f.name for f in fields(ScalerConfig)}
    for key in data:
        if key not in known:
            problems.append((f"{path}.{key}", f"unknown key; known keys: {', '.join(sorted(known))}"))
    values: dict[str, Any] = {}
    for name in _POSITIVE:
        if name in data:
            value = data[name]
            if not _number(value) or value <= 0:
                problems.append((f"{path}.{name}", f"must be a number > 0, got {value!r}"))
            values[name] = value
    for name in _FRACTIONS:
        if name in data:
            value = data[name]
            if not _number(value) or not 0 < value <= 1:
                problems.append((f"{path}.{name}", f"must be a fraction in (0, 1], got {value!r}"))
            values[name] = value
    if "grow_on_demand" in data:
        if not isinstance(data["grow_on_demand"], bool):
            problems.append((f"{path}.grow_on_demand", f"must be true or false, got {data['grow_on_demand']!r}"))
        values["grow_on_demand"] = data["grow_on_demand"]
    # Defaults from an instance: on a slots dataclass the class attribute is the slot, not the default.
    defaults = ScalerConfig()
    grow_at = values.get("grow_below_budget_fraction", defaults.grow_below_budget_fraction)
    shrink_at = values.get("shrink_at_budget_fraction", defaults.shrink_at_budget_fraction)
    if _number(grow_at) and _number(shrink_at) and grow_at >= shrink_at:
        problems.append((f"{path}.grow_below_budget_fraction",
                         f"{grow_at} must be below shrink_at_budget_fraction {shrink_at}, or the job "
                         f"would grow and shrink at the same spend; lower it or raise the other"))
    triggers = data.get("triggers", [])
    parsed: list[Trigger] = []
    if not isinstance(triggers, list):
        problems.append((f"{path}.triggers", f"must be a list of triggers, got {triggers!r}"))
    else:
        for index, item in enumerate(triggers):
            trigger = _trigger(item, f"{path}.triggers[{index}]", problems)
            if trigger is not None:
                parsed.append(trigger)
    if problems:
        raise ConfigError(problems)
    return ScalerConfig(**values, triggers=tuple(parsed))
