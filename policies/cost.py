"""Cost rules: a stack budget with notifications; every team with a budget and a GPU queue
quota; the worst case at the NodePools' limits (the shared cost model, prices from pack config)
within the stack budget times a tunable factor."""

from __future__ import annotations

from typing import Any, Mapping

from infra import cost as cost_model
from policies import objects
from policies.framework import MISSING, Report, Rule, Stack, contains_unknown, dig, is_unknown, label, number

BUDGET = "aws:budgets/budget:Budget"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
EKS_CLUSTER = "aws:eks/cluster:Cluster"


def check_stack_budget(stack: Stack, config: Mapping, report: Report) -> None:
    budgets = stack.of_type(BUDGET)
    if not budgets:
        report.violation("the stack declares no aws.budgets.Budget: add a monthly COST budget with notifications")
        return
    good = False
    for b in budgets:
        props, problems = b.props, []
        amount = dig(props, "limitAmount")
        if contains_unknown([dig(props, "budgetType"), dig(props, "timeUnit"), amount]) or is_unknown(
                dig(props, "notifications")):
            report.unknown(f"{label(b)}: its type, period, amount or notifications")
            good = True  # not known to be wrong
            continue
        if dig(props, "budgetType") != "COST":
            problems.append(f"budgetType must be COST, got {dig(props, 'budgetType')!r}")
        if dig(props, "timeUnit") != "MONTHLY":
            problems.append(f"timeUnit must be MONTHLY, got {dig(props, 'timeUnit')!r}")
        if (number(amount) or 0) <= 0:
            problems.append(f"limitAmount must be > 0, got {None if amount is MISSING else amount!r}")
        notifications = dig(props, "notifications")
        notifications = [] if notifications is MISSING else notifications
        kinds = set()
        for n in notifications:
            emails, topics = dig(n, "subscriberEmailAddresses"), dig(n, "subscriberSnsTopicArns")
            if is_unknown(n) or is_unknown(dig(n, "notificationType")):
                report.unknown(f"{label(b)}: a notification")
                good = True
                continue
            # A topic ARN unknown at preview is still a subscriber: the topic is in the stack.
            if is_unknown(emails) and is_unknown(topics):
                report.unknown(f"{label(b)}: a notification's subscribers")
            elif not (isinstance(emails, list) and emails) and not (isinstance(topics, list) and topics):
                problems.append(f"a {dig(n, 'notificationType')} notification at {dig(n, 'threshold')}% has no "
                                f"subscriber")
                continue
            kinds.add(dig(n, "notificationType"))
        required = {"ACTUAL", "FORECASTED"} if config["requireForecast"] else {"ACTUAL"}
        if not required <= kinds:
            problems.append(f"needs notifications of types {sorted(required)} with subscribers, has {sorted(kinds)}")
        if problems:
            report.violation(f"{label(b)}: " + "; ".join(problems), b.urn)
        else:
            good = True
    if not good and not report.violations:
        report.violation("no usable stack budget")


def _teams(stack: Stack, config: Mapping, report: Report) -> tuple[dict[str, str], Any]:
    _, document = objects.team_budgets(stack, config["teamBudgetsConfigMap"])
    if is_unknown(document):
        report.unknown(f"ConfigMap {config['teamBudgetsConfigMap']}: data")
    for what in objects.undecided_teams(stack, config["systemNamespaces"]):
        report.unknown(what)
    return objects.known_teams(stack, config["teamBudgetsConfigMap"], config["systemNamespaces"]), document


def check_team_budget(stack: Stack, config: Mapping, report: Report) -> None:
    teams, document = _teams(stack, config, report)
    if is_unknown(document):
        return
    entries = dig(document, "teams")
    for team, seen in sorted(teams.items()):
        budget = dig(entries, team, "monthlyBudgetUsd")
        if is_unknown(budget):
            report.unknown(f"team {team}: monthlyBudgetUsd")
        elif (number(budget) or 0) <= 0:
            report.violation(f"team {team} (seen in {seen}) needs a monthly budget > 0 in ConfigMap "
                             f"{config['teamBudgetsConfigMap']} (its metered spend puts the queue on hold at the "
                             f"budget), got {None if budget is MISSING else budget!r}")


def _gpu_quota(queue_spec: Any) -> tuple[float | None, bool, bool]:
    """(total nominal GPU quota or None, borrowing capped everywhere, any unknown) of a ClusterQueue."""
    groups = dig(queue_spec, "resourceGroups")
    if is_unknown(groups) or contains_unknown(groups):
        return None, False, True
    total, capped, found = 0.0, True, False
    for group in groups if isinstance(groups, list) else []:
        for flavor in dig(group, "flavors") if isinstance(dig(group, "flavors"), list) else []:
            for resource in dig(flavor, "resources") if isinstance(dig(flavor, "resources"), list) else []:
                if dig(resource, "name") != objects.GPU_RESOURCE:
                    continue
                quota = number(dig(resource, "nominalQuota"))
                if quota is not None:
                    total, found = total + quota, True
                if dig(resource, "borrowingLimit") is MISSING:
                    capped = False
    return (total if found else None), capped, False


def check_team_queue_quota(stack: Stack, config: Mapping, report: Report) -> None:
    teams, document = _teams(stack, config, report)
    if not teams:
        return
    queues = [r for r in stack.resources
              if r.type.startswith(objects.CLUSTER_QUEUE_PREFIX) and r.type.endswith(":ClusterQueue")]
    if not any(r.type.startswith(objects.CLUSTER_QUEUE_PREFIX) for r in stack.resources):
        report.undecided(f"teams {', '.join(sorted(teams))}: this stack declares no Kueue objects yet, so their "
                         f"queue quotas cannot be checked")
        return
    by_name = {dig(q.props, "metadata", "name"): q for q in queues}
    for team in sorted(teams):
        queue_name = dig(document, "teams", team, "clusterQueue")
        queue_name = team if queue_name is MISSING or is_unknown(queue_name) else queue_name
        queue = by_name.get(queue_name)
        if queue is None:
            if any(is_unknown(n) for n in by_name):
                report.unknown(f"team {team}: ClusterQueue names")
            else:
                report.violation(f"team {team} has no Kueue ClusterQueue {queue_name!r}: every team's GPUs are "
                                 f"admitted through a queue with a quota")
            continue
        quota, capped, unknown = _gpu_quota(dig(queue.props, "spec"))
        cohort = dig(queue.props, "spec", "cohortName")
        if unknown:
            report.unknown(f"{label(queue)}: spec.resourceGroups")
        elif quota is None or quota <= 0:
            report.violation(f"{label(queue)}: team {team}'s ClusterQueue needs a nominalQuota > 0 for "
                             f"{objects.GPU_RESOURCE}, got {quota}", queue.urn)
        elif cohort is not MISSING and not capped:
            report.violation(f"{label(queue)}: in cohort {cohort!r}, every {objects.GPU_RESOURCE} quota needs a "
                             f"borrowingLimit, or borrowed GPUs can outspend team {team}'s budget", queue.urn)


def check_worst_case(stack: Stack, config: Mapping, report: Report) -> None:
    prices = cost_model.price_book({
        name: cost_model.Price(usd_per_hour=float(usd), as_of="pack config", source="--policy-pack-config")
        for name, usd in config["prices"].items()})
    budgets = stack.of_type(BUDGET)
    # The stack's budget is the one filtered on its stack tag (infra/components/budgets.py); else the largest.
    stack_budgets = [b for b in budgets if any(
        isinstance(v, str) and v.startswith("user:tensile.io/stack$")
        for f in (dig(b.props, "costFilters") if isinstance(dig(b.props, "costFilters"), list) else [])
        for v in (dig(f, "values") if isinstance(dig(f, "values"), list) else []))] or budgets
    amounts = [dig(b.props, "limitAmount") for b in stack_budgets]
    if any(is_unknown(a) for a in amounts):
        report.unknown("the stack budget's limitAmount")
        return
    budget = max(number(a) or 0 for a in amounts) if amounts else number(config.get("monthlyBudgetUsd"))
    if not budget:
        report.violation("no stack budget to compare the worst case with (declare an aws.budgets.Budget or set "
                         "monthlyBudgetUsd in the pack config)")
        return
    pools = []
    for pool in stack.of_type(objects.NODE_POOL):
        spec = dig(pool.props, "spec")
        gpu = objects.is_gpu_node_pool(spec)
        if gpu is False:
            continue
        limit = dig(spec, "limits", objects.GPU_RESOURCE)
        type_req = objects.requirement(spec, objects.INSTANCE_TYPE)
        if (gpu is None or is_unknown(limit) or is_unknown(type_req)
                or (type_req is not MISSING and objects.allowed_values(type_req, ()) is None)):
            report.unknown(f"{label(pool)}: its GPU limit or instance types")
            return
        types = objects.allowed_values(type_req, ()) if dig(type_req, "operator") == "In" else None
        if number(limit) is None or not types:
            report.violation(f"{label(pool)}: cannot bound its cost: it needs a GPU limit and an `In` list of "
                             f"instance types", pool.urn)
            return
        pools.append(cost_model.PoolSpec(name=pool.name, instance_types=tuple(sorted(types)),
                                         max_gpus=int(number(limit))))
    system_type, system_max = None, 0
    for group in stack.of_type(NODE_GROUP):
        types, scaling = dig(group.props, "instanceTypes"), dig(group.props, "scalingConfig", "maxSize")
        if contains_unknown([types, scaling]):
            report.unknown(f"{label(group)}: instanceTypes or scalingConfig.maxSize")
            return
        if isinstance(types, list) and types:
            dearest = max(types, key=lambda t: prices.on_demand.get(t, cost_model.Price(
                usd_per_hour=0, as_of="", source="")).usd_per_hour)
            system_type, system_max = dearest, system_max + int(number(scaling) or 0)
    try:
        fixed = cost_model.FixedSpec(system_instance_type=system_type or "m7i.large", system_nodes_min=0,
                                     system_nodes_max=system_max if system_type else 0,
                                     nat_gateways=len(stack.of_type(NAT_GATEWAY)),
                                     control_planes=len(stack.of_type(EKS_CLUSTER)))
        estimate = cost_model.estimate(pools, fixed, prices)
    except cost_model.CostModelError as e:
        report.violation(f"cannot price the stack's worst case: {e} (add it under `prices` in the pack config)")
        return
    ceiling = budget * config["budgetFactor"]
    if estimate.worst_case_monthly > ceiling:
        top = sorted(estimate.pools, key=lambda p: -p.hourly_at_max_on_demand)[:3]
        detail = ", ".join(f"{p.name} {p.max_gpus} GPUs ${p.hourly_at_max_on_demand * cost_model.HOURS_PER_MONTH:,.0f}"
                           for p in top)
        report.violation(f"worst-case monthly cost at the NodePools' GPU limits, all on-demand, is "
                         f"${estimate.worst_case_monthly:,.0f}, above the budget ${budget:,.0f} × "
                         f"{config['budgetFactor']} = ${ceiling:,.0f} (largest pools: {detail}); lower the limits "
                         f"or raise the budget")


RULES = [
    Rule("stack-budget-with-notifications", "The stack has a monthly AWS cost budget that notifies someone.",
         "stack", check_stack_budget, (),
         {"requireForecast": {"type": "boolean", "default": True,
                              "description": "also require a FORECASTED notification"}}),
    Rule("team-has-budget", "Every team has a monthly budget the spend meter enforces.",
         "stack", check_team_budget, (), objects.TEAM_CONFIG),
    Rule("team-has-queue-quota", "Every team's GPUs go through a Kueue ClusterQueue with a GPU quota and capped "
         "borrowing.", "stack", check_team_queue_quota, (), objects.TEAM_CONFIG),
    Rule("worst-case-cost-within-budget", "The all-on-demand cost at every GPU NodePool's limit fits the stack "
         "budget times a factor.", "stack", check_worst_case, (),
         {"budgetFactor": {"type": "number", "default": 1.0, "description": "ceiling = stack budget × this"},
          "prices": {"type": "object", "additionalProperties": {"type": "number"}, "default": {},
                     "description": "on-demand USD/hour by instance type, over infra/cost.py's table"},
          "monthlyBudgetUsd": {"type": "number", "description": "budget to use when the stack declares none"}}),
]
