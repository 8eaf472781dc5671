"""A small IAM policy evaluator for the offline tests: does one identity policy document allow
one request (action, resource ARN, condition context)? Explicit deny wins, then any allow.

Covers what Tensile's and Karpenter's policies use: Allow/Deny, Action/NotAction and
Resource/NotResource with `*`/`?` wildcards, and the condition operators StringEquals,
StringLike, StringEqualsIfExists, Null, ArnLike, Bool and ForAllValues:/ForAnyValue:StringEquals.
Anything else (another operator, a policy variable) raises instead of guessing. No kept library
does this: policyuniverse parses and expands statements, iam-ape merges the policies attached to an
entity, policy_sentry writes policies; none evaluates a request with a condition context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

ALLOW, DENY, IMPLICIT_DENY = "Allow", "Deny", "ImplicitDeny"


class UnsupportedPolicy(ValueError):
    """The document uses something this evaluator does not model; judging it would be a guess."""


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes: a request to CreateFleet is several, one per resource."""

    action: str
    resource: str
    context: Mapping[str, str | list[str]] = field(default_factory=dict)
    """Condition keys as AWS sends them: `aws:RequestTag/K`, `aws:ResourceTag/K`, `aws:TagKeys`
    (a list), `ec2:CreateAction`, `aws:RequestedRegion`, `iam:PassedToService`, ..."""
    why: str = ""
    """What Karpenter does that makes this request (for the failure message)."""


@dataclass(frozen=True)
class Decision:
    effect: str
    statements: tuple[str, ...]
    """The Sids (or indexes) of the statements that decided it."""


def request_tags(tags: Mapping[str, str]) -> dict[str, str | list[str]]:
    """The context a request carrying `tags` (a TagSpecification, CreateTags' Tags) sends."""
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": sorted(tags)}


def resource_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The context an existing resource with `tags` adds."""
    return {f"aws:ResourceTag/{k}": v for k, v in tags.items()}


def _glob(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    # IAM's wildcards: `*` any run of characters (colons and slashes included), `?` one character.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _no_variables(text: str) -> str:
    if "${" in text:
        raise UnsupportedPolicy(f"policy variables are not modelled: {text!r}")
    return text


def _single(key: str, context_value) -> str | None:
    if isinstance(context_value, list):
        raise UnsupportedPolicy(f"{key} is multivalued: use ForAllValues:/ForAnyValue: with it")
    return context_value


def _string_equals(condition_values: list[str], value: str) -> bool:
    return value in condition_values


def _string_like(condition_values: list[str], value: str) -> bool:
    return any(_glob(p, value, case_sensitive=True) for p in condition_values)


def _bool(condition_values: list[str], value: str) -> bool:
    return str(value).lower() in [str(v).lower() for v in condition_values]


_SINGLE = {"StringEquals": _string_equals, "StringLike": _string_like, "ArnLike": _string_like, "Bool": _bool}


def _condition_holds(operator: str, key: str, condition_values: list, context: Mapping) -> bool:
    found = {k.lower(): v for k, v in context.items()}.get(key.lower())  # keys are case-insensitive
    if operator == "Null":
        (wanted,) = {str(v).lower() for v in condition_values}
        return (found is None) == (wanted == "true")
    if operator.startswith(("ForAllValues:", "ForAnyValue:")):
        qualifier, base = operator.split(":", 1)
        if base != "StringEquals":
            raise UnsupportedPolicy(f"condition operator {operator} is not modelled")
        values = _listed(found) if found is not None else []
        if qualifier == "ForAllValues":
            return all(v in condition_values for v in values)  # true for an absent key, as in AWS
        return any(v in condition_values for v in values)
    base, if_exists = (operator[:-len("IfExists")], True) if operator.endswith("IfExists") else (operator, False)
    test = _SINGLE.get(base)
    if test is None:
        raise UnsupportedPolicy(f"condition operator {operator} is not modelled")
    value = _single(key, found)
    if value is None:
        return if_exists
    return test([str(v) for v in condition_values], str(value))


def _matches(statement: dict, request: Request) -> bool:
    if ("Action" in statement) == ("NotAction" in statement):
        raise UnsupportedPolicy(f"a statement needs exactly one of Action/NotAction: {statement}")
    if ("Resource" in statement) == ("NotResource" in statement):
        raise UnsupportedPolicy(f"a statement needs exactly one of Resource/NotResource: {statement}")
    if "Principal" in statement or "NotPrincipal" in statement:
        raise UnsupportedPolicy("a principal: this evaluates identity policies only")
    actions = [_no_variables(a) for a in _listed(statement.get("Action", statement.get("NotAction")))]
    action_hit = any(_glob(a, request.action, case_sensitive=False) for a in actions)
    if action_hit != ("Action" in statement):
        return False
    resources = [_no_variables(r) for r in _listed(statement.get("Resource", statement.get("NotResource")))]
    resource_hit = any(_glob(r, request.resource, case_sensitive=True) for r in resources)
    if resource_hit != ("Resource" in statement):
        return False
    for operator, keyed in statement.get("Condition", {}).items():
        for key, values in keyed.items():
            if not _condition_holds(operator, key, [_no_variables(str(v)) if isinstance(v, str) else v
                                                    for v in _listed(values)], request.context):
                return False
    return True


def evaluate(document: dict, request: Request) -> Decision:
    """AWS's order for one identity policy: an explicit Deny wins, else any Allow, else deny."""
    if document.get("Version") != "2012-10-17":
        raise UnsupportedPolicy(f"policy version {document.get('Version')!r}: only 2012-10-17")
    allows, denies = [], []
    for index, statement in enumerate(_listed(document["Statement"])):
        effect = statement.get("Effect")
        if effect not in (ALLOW, DENY):
            raise UnsupportedPolicy(f"statement {index}: Effect {effect!r}")
        if _matches(statement, request):
            (allows if effect == ALLOW else denies).append(statement.get("Sid", str(index)))
    if denies:
        return Decision(DENY, tuple(denies))
    if allows:
        return Decision(ALLOW, tuple(allows))
    return Decision(IMPLICIT_DENY, ())


def pattern_covers(pattern: str, value: str) -> bool:
    """Whether IAM pattern `pattern` matches every string `value` (itself a pattern) matches:
    true when `pattern` matches `value` with `value`'s wildcards read as literal characters, as
    long as each of `value`'s wildcards falls inside a `*` of `pattern` (checked by matching
    `value` with its `*` turned into a character no ARN holds)."""
    probe = value.replace("*", "\x00").replace("?", "\x01")
    return _glob(pattern, probe, case_sensitive=True)


__all__ = ["ALLOW", "DENY", "IMPLICIT_DENY", "Decision", "Request", "UnsupportedPolicy", "evaluate",
           "pattern_covers", "request_tags", "resource_tags"]
