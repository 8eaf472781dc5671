"""Tagging rules: stack, environment and cost-centre tags on every taggable AWS resource (and on
the EC2NodeClasses, whose tags reach the instances Karpenter launches); the team tag on team resources."""

from __future__ import annotations

from typing import Any, Mapping

from policies import objects
from policies.framework import MISSING, Report, Resource, Rule, dig, is_unknown, label, stack_of
from policies.taggable import taggable_types

STACK_TAG = "tensile.io/stack"
TEAM_ACCESS_POINT = "aws:efs/accessPoint:AccessPoint"


def _tag_problems(tags: Any, required: list[str], stack: str, report: Report, what: str) -> list[str] | None:
    if is_unknown(tags):
        report.unknown(what)
        return None
    tags = tags if isinstance(tags, Mapping) else {}
    problems = []
    for key in required:
        value = tags.get(key, MISSING)
        if is_unknown(value):
            report.unknown(f"{what}.{key}")
        elif not isinstance(value, str) or not value:
            problems.append(f"missing {key}")
    stack_value = tags.get(STACK_TAG)
    if STACK_TAG in required and isinstance(stack_value, str) and stack and not is_unknown(stack_value) \
            and stack_value != stack:
        problems.append(f"{STACK_TAG} is {stack_value!r} but the resource is in stack {stack!r}")
    return problems


def check_required_tags(resource: Resource, config: Mapping, report: Report) -> None:
    if resource.type == objects.EC2_NODE_CLASS:
        tags, what = dig(resource.props, "spec", "tags"), f"{label(resource)}: spec.tags"
    elif resource.type in taggable_types():
        tags, what = dig(resource.props, "tags"), f"{label(resource)}: tags"
    else:
        return
    problems = _tag_problems(tags, list(config["requiredTags"]), stack_of(resource.urn), report, what)
    if problems:
        report.violation(f"{what}: {'; '.join(problems)} (cost reports and the stack budget filter on these)")


def team_of(resource: Resource, config: Mapping) -> str | None | bool:
    """The team a resource belongs to: its EFS access point path, or its place under a team
    component; True when it is a team resource whose team is not readable; None when it is not one."""
    if resource.type == TEAM_ACCESS_POINT:
        path = dig(resource.props, "rootDirectory", "path")
        if is_unknown(path):
            return True
        prefix = config["teamPathPrefix"].rstrip("/") + "/"
        if isinstance(path, str) and path.startswith(prefix):
            return path[len(prefix):].split("/", 1)[0]
    type_chain = resource.urn.split("::")[2] if resource.urn.count("::") >= 3 else ""
    if any(t.endswith(config["teamComponentSuffix"]) for t in type_chain.split("$")[:-1]):
        return True
    return None


def check_team_tag(resource: Resource, config: Mapping, report: Report) -> None:
    if resource.type not in taggable_types():
        return
    team = team_of(resource, config)
    if team is None:
        return
    tags = dig(resource.props, "tags")
    value = dig(tags, objects.TEAM_TAG)
    if is_unknown(tags) or is_unknown(value):
        report.unknown(f"{label(resource)}: tags.{objects.TEAM_TAG}")
    elif not isinstance(value, str) or not value:
        report.violation(f"{label(resource)}: a team resource must carry {objects.TEAM_TAG}"
                         + (f" = {team!r}" if isinstance(team, str) else ""))
    elif isinstance(team, str) and value != team:
        report.violation(f"{label(resource)}: {objects.TEAM_TAG} is {value!r} but the resource belongs to team "
                         f"{team!r}")


RULES = [
    Rule("aws-stack-tags", "Every taggable AWS resource (and EC2NodeClass) carries the stack, environment and "
         "cost-centre tags.", "resource", check_required_tags, (),
         {"requiredTags": {"type": "array", "items": {"type": "string"},
                           "default": [STACK_TAG, "tensile.io/environment", "tensile.io/cost-centre"]}}),
    Rule("team-resources-tagged", "Team resources carry the team tag.", "resource", check_team_tag, (),
         {"teamPathPrefix": {"type": "string", "default": "/teams",
                             "description": "EFS access points under this path belong to the team named next"},
          "teamComponentSuffix": {"type": "string", "default": ":Team",
                                  "description": "resources under a component whose type ends so are team resources"}}),
]
