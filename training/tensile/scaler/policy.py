"""The scaler's policy core: from a job, its team and the market, the node count it should have
and why. Pure and clock-free (the caller passes `now_s`), so one table of cases tests it all.

Rules in order (docs/design/scaler.md): resume a suspended job; suspend one below its minimum;
shrink for higher-priority work, the budget, a trigger, or nodes that never became ready (these
ignore the cool-down: they release money or quota someone is owed); then, after the cool-down,
shrink a collapsed node or grow by one when quota, capacity, budget and throughput per dollar
allow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tensile.scaler.api import Decision, JobState, NodeOffer, PoolMarket, ReasonKind, TeamState
from tensile.scaler.config import ScalerConfig, Trigger, TriggerAction


def cooldown_s(job: JobState, config: ScalerConfig) -> float:
    """A resize stops the whole group once (save, re-form, resume): resizing more often than a
    few recoveries would spend more time recovering than training."""
    return max(config.cooldown_min_s, config.cooldown_recovery_multiple * job.recovery_s)


def trigger_holds(trigger: Trigger, team: TeamState, market: Mapping[str, PoolMarket], *,
                  loosened_by: float = 0.0) -> bool:
    """Whether every condition of the trigger holds; `loosened_by` moves each threshold that
    fraction towards firing (used for hysteresis: no growing while a shrink trigger nearly holds)."""
    if trigger.team_queue_empty and team.pending:
        return False
    spend = team.spend_fraction
    if trigger.spend_below_fraction is not None and not spend < trigger.spend_below_fraction * (1 + loosened_by):
        return False
    if trigger.spend_above_fraction is not None and not spend > trigger.spend_above_fraction * (1 - loosened_by):
        return False
    if trigger.pool is not None:
        pool = market.get(trigger.pool)
        price = pool.spot_usd_per_hour if pool is not None else None
        if price is None:  # an unknown price satisfies no price condition: never act on a guess
            return False
        above, below = trigger.spot_price_above_usd_per_hour, trigger.spot_price_below_usd_per_hour
        if above is not None and not price > above * (1 - loosened_by):
            return False
        if below is not None and not price < below * (1 + loosened_by):
            return False
    return True


def describe(trigger: Trigger) -> str:
    conditions = [f"{name}={getattr(trigger, name)}" for name in
                  ("team_queue_empty", "spend_below_fraction", "spend_above_fraction",
                   "spot_price_above_usd_per_hour", "spot_price_below_usd_per_hour", "pool")
                  if getattr(trigger, name) not in (None, False)]
    return f"{trigger.action.value} when " + " and ".join(conditions)


def next_node_offer(pool: PoolMarket | None, config: ScalerConfig) -> NodeOffer | None:
    """The cheapest source of one more node now: an idle reservation, spot on offer, on-demand."""
    if pool is None:
        return None
    if pool.reserved_nodes_free > 0:
        return NodeOffer(source="reserved", usd_per_hour=0.0)
    if pool.spot_nodes_available and pool.spot_usd_per_hour is not None:
        return NodeOffer(source="spot", usd_per_hour=pool.spot_usd_per_hour)
    if config.grow_on_demand:
        return NodeOffer(source="on-demand", usd_per_hour=pool.on_demand_usd_per_hour)
    return None


def nodes_on_offer(pool: PoolMarket | None, config: ScalerConfig) -> float:
    if pool is None:
        return 0
    if config.grow_on_demand:
        return math.inf
    return pool.reserved_nodes_free + (pool.spot_nodes_available or 0)


def _gpus_for_us(job: JobState, team: TeamState) -> int:
    """Free quota less what higher-priority waiting work needs: never grow into their way."""
    owed = sum(p.gpus for p in team.pending if p.priority > job.priority)
    return team.gpus_free - owed


def _blocked_by_shrink_trigger(team: TeamState, market: Mapping[str, PoolMarket],
                               config: ScalerConfig) -> Trigger | None:
    for trigger in config.triggers:
        if trigger.action is TriggerAction.SHRINK_TO_MIN and trigger_holds(
                trigger, team, market, loosened_by=config.price_hysteresis_fraction):
            return trigger
    return None


def _grow_gate(team: TeamState, market: Mapping[str, PoolMarket], config: ScalerConfig) -> str | None:
    """Why the triggers and the budget forbid growing now, or None if they allow it."""
    if not team.spend_fraction < config.grow_below_budget_fraction:
        return (f"spend {team.spend_fraction:.0%} of budget is not below the grow limit "
                f"{config.grow_below_budget_fraction:.0%}")
    blocking = _blocked_by_shrink_trigger(team, market, config)
    if blocking is not None:
        return (f"trigger '{describe(blocking)}' holds within its hysteresis "
                f"({config.price_hysteresis_fraction:.0%})")
    gates = [t for t in config.triggers if t.action is TriggerAction.GROW]
    if gates and not any(trigger_holds(t, team, market) for t in gates):
        return "no grow trigger holds: " + "; ".join(describe(t) for t in gates)
    return None


def _resume(job: JobState, team: TeamState, market: Mapping[str, PoolMarket], config: ScalerConfig,
            now_s: float) -> Decision:
    hold = lambda why: Decision(desired_nodes=0, kind=ReasonKind.HOLD, reason=f"suspended; {why}")  # noqa: E731
    if job.last_resize_at_s is not None and now_s - job.last_resize_at_s < cooldown_s(job, config):
        return hold(f"cooling down ({cooldown_s(job, config):.0f} s after the suspension)")
    if nodes_on_offer(market.get(job.pool), config) < job.min_nodes:
        return hold(f"pool {job.pool} offers fewer than the minimum {job.min_nodes} nodes")
    needed = job.min_nodes * job.gpus_per_node
    if _gpus_for_us(job, team) < needed:
        return hold(f"quota: {_gpus_for_us(job, team)} GPUs free for it, the minimum needs {needed}")
    gate = _grow_gate(team, market, config)
    if gate is not None:
        return hold(gate)
    return Decision(desired_nodes=job.min_nodes, kind=ReasonKind.RESUME,
                    reason=f"capacity for {job.min_nodes} nodes in {job.pool}, {needed} GPUs of quota free")


def _safety_shrink(job: JobState, team: TeamState, market: Mapping[str, PoolMarket],
                   config: ScalerConfig, now_s: float) -> Decision | None:
    """Shrinks owed to someone else (waiting work, the budget, a trigger, Kueue's pods-ready
    timeout): they do not wait for the cool-down."""
    n = job.current_nodes
    higher = sorted((p for p in team.pending if p.priority > job.priority), key=lambda p: -p.priority)
    if higher and n > job.min_nodes:
        first = higher[0]
        short = first.gpus - max(team.gpus_free, 0)
        if short > 0:
            target = max(job.min_nodes, n - math.ceil(short / job.gpus_per_node))
            return Decision(desired_nodes=target, kind=ReasonKind.SHRINK_PRIORITY,
                            reason=f"{first.name} (priority {first.priority} > {job.priority}) waits for "
                                   f"{first.gpus} GPUs, {max(team.gpus_free, 0)} free")
    if team.spend_fraction >= config.shrink_at_budget_fraction and n > job.min_nodes:
        return Decision(desired_nodes=job.min_nodes, kind=ReasonKind.SHRINK_BUDGET,
                        reason=f"spend {team.spend_fraction:.0%} of budget reached the shrink limit "
                               f"{config.shrink_at_budget_fraction:.0%}")
    for trigger in config.triggers:
        if trigger.action is TriggerAction.SHRINK_TO_MIN and n > job.min_nodes and trigger_holds(trigger, team, market):
            return Decision(desired_nodes=job.min_nodes, kind=ReasonKind.SHRINK_TRIGGER,
                            reason=f"trigger '{describe(trigger)}' holds")
    if (job.ready_nodes < n and job.unready_since_s is not None
            and now_s - job.unready_since_s >= config.grow_ready_deadline_s):
        return Decision(desired_nodes=job.ready_nodes, kind=ReasonKind.SHRINK_NOT_READY,
                        reason=f"{n - job.ready_nodes} node(s) not ready after "
                               f"{config.grow_ready_deadline_s:.0f} s: giving their quota back")
    return None


def decide(job: JobState, team: TeamState, market: Mapping[str, PoolMarket], config: ScalerConfig,
           *, now_s: float) -> Decision:
    """The node count the job should have now, and why."""
    if job.suspended:
        return _resume(job, team, market, config, now_s)
    if job.ready_nodes < job.min_nodes:
        since = job.below_min_since_s
        if since is None:  # its nodes are placed and starting: no capacity is missing
            return Decision(desired_nodes=job.current_nodes, kind=ReasonKind.HOLD,
                            reason=f"{job.ready_nodes} ready < minimum {job.min_nodes}: waiting for "
                                   f"{job.min_nodes - job.ready_nodes} node(s) to become ready")
        if now_s - since >= config.suspend_after_s:
            return Decision(desired_nodes=0, kind=ReasonKind.SUSPEND,
                            reason=f"{job.ready_nodes} ready < minimum {job.min_nodes} for "
                                   f"{now_s - since:.0f} s: releasing its quota until capacity returns")
        return Decision(desired_nodes=job.current_nodes, kind=ReasonKind.HOLD,
                        reason=f"{job.ready_nodes} ready < minimum {job.min_nodes}; suspending after "
                               f"{config.suspend_after_s:.0f} s")
    shrink = _safety_shrink(job, team, market, config, now_s)
    if shrink is not None:
        return shrink
    n = job.current_nodes
    hold = lambda why: Decision(desired_nodes=n, kind=ReasonKind.HOLD, reason=why)  # noqa: E731
    if job.ready_nodes < n:
        return hold(f"waiting for {n - job.ready_nodes} node(s) to become ready")
    if job.last_resize_at_s is not None and now_s - job.last_resize_at_s < cooldown_s(job, config):
        return hold(f"cooling down for {cooldown_s(job, config):.0f} s after a resize "
                    f"(recovery measured {job.recovery_s:.0f} s)")
    measured = job.samples_per_s_by_nodes
    if n > job.min_nodes and n in measured and n - 1 in measured:
        gain, average = measured[n] - measured[n - 1], measured[n] / n
        if gain < config.collapse_fraction * average:
            return Decision(desired_nodes=n - 1, kind=ReasonKind.SHRINK_COLLAPSE,
                            reason=f"node {n} adds {gain:.1f} samples/s, under {config.collapse_fraction:.0%} "
                                   f"of the {average:.1f} per node average")
    return _grow(job, team, market, config)


def _grow(job: JobState, team: TeamState, market: Mapping[str, PoolMarket], config: ScalerConfig) -> Decision:
    n = job.current_nodes
    hold = lambda why: Decision(desired_nodes=n, kind=ReasonKind.HOLD, reason=why)  # noqa: E731
    if n >= job.max_nodes:
        return hold(f"at its maximum {job.max_nodes}")
    gate = _grow_gate(team, market, config)
    if gate is not None:
        return hold(gate)
    if _gpus_for_us(job, team) < job.gpus_per_node:
        return hold(f"quota: {max(_gpus_for_us(job, team), 0)} GPUs free for it, a node needs {job.gpus_per_node}")
    pool = market.get(job.pool)
    if pool is not None and pool.gpu_limit is not None and (n + 1) * job.gpus_per_node > pool.gpu_limit:
        return hold(f"pool {job.pool}'s limit of {pool.gpu_limit} GPUs holds {pool.gpu_limit // job.gpus_per_node} "
                    f"of its nodes")
    offer = next_node_offer(pool, config)
    if offer is None:
        return hold(f"no capacity on offer in pool {job.pool}")
    now_rate = job.samples_per_s_by_nodes.get(n)
    if not now_rate:
        return hold(f"no throughput measured at {n} node(s) yet")
    next_rate = job.samples_per_s_by_nodes.get(n + 1)
    estimated = next_rate is None
    if estimated:
        next_rate = now_rate + config.assumed_scaling_efficiency * now_rate / n
    gain = next_rate - now_rate
    if gain <= 0:
        return hold(f"{n + 1} nodes measured no faster ({next_rate:.1f} vs {now_rate:.1f} samples/s)")
    current_price = pool.spot_usd_per_hour if pool.spot_usd_per_hour is not None else pool.on_demand_usd_per_hour
    average_per_dollar = now_rate / (n * current_price) if current_price > 0 else math.inf
    marginal_per_dollar = gain / offer.usd_per_hour if offer.usd_per_hour > 0 else math.inf
    if marginal_per_dollar < config.min_marginal_efficiency * average_per_dollar:
        return hold(f"node {n + 1} ({offer.source}, ${offer.usd_per_hour:.2f}/h) gives {marginal_per_dollar:.2f} "
                    f"samples/s per $/h, under {config.min_marginal_efficiency:.0%} of the job's "
                    f"{average_per_dollar:.2f}")
    samples_left = job.steps_left * job.samples_per_step
    time_now = samples_left / now_rate
    time_grown = job.recovery_s + samples_left / next_rate
    if time_grown >= time_now:
        return hold(f"{job.steps_left} steps left: growing would finish at {time_grown:.0f} s "
                    f"(recovery {job.recovery_s:.0f} s included), not sooner than {time_now:.0f} s")
    extra_cost = offer.usd_per_hour * (samples_left / next_rate) / 3600
    limit = config.grow_below_budget_fraction * team.budget_usd
    if team.spend_usd + extra_cost >= limit:
        return hold(f"node {n + 1} would cost ${extra_cost:.0f} to the end of the run: "
                    f"${team.spend_usd:.0f} spent, grow limit ${limit:.0f}")
    return Decision(desired_nodes=n + 1, kind=ReasonKind.GROW,
                    reason=f"{offer.source} node at ${offer.usd_per_hour:.2f}/h adds "
                           f"{'~' if estimated else ''}{gain:.1f} samples/s "
                           f"({'estimated' if estimated else 'measured'}), finishing in "
                           f"{time_grown:.0f} s instead of {time_now:.0f} s")
