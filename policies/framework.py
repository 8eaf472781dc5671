"""The pack's rule model: rules are plain functions over plain resource data that report
violations and values unknown at preview; `to_policy` turns one into a CrossGuard policy.

Why not the SDK's own unknown handling: its proxy raises at the first unknown value it meets,
which stops the rule before it reports what it *can* see. Here a rule checks everything known,
reports those violations at the rule's level, and only then turns what it could not see into one
advisory diagnostic (the SDK reports an `UnknownValueError` as advisory, whatever the rule's level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pulumi_policy as crossguard
from pulumi_policy.deserialize import serialize_properties
from pulumi_policy.proxy import (
    UNKNOWN_ARRAY_VALUE, UNKNOWN_BOOLEAN_VALUE, UNKNOWN_NUMBER_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE,
    UnknownValueError,
)

UNKNOWN_SENTINELS = frozenset({UNKNOWN_STRING_VALUE, UNKNOWN_BOOLEAN_VALUE, UNKNOWN_NUMBER_VALUE,
                               UNKNOWN_ARRAY_VALUE, UNKNOWN_OBJECT_VALUE})
MISSING = object()
"""A property that is not set (as opposed to set but unknown at preview)."""


def is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value in UNKNOWN_SENTINELS


def contains_unknown(value: Any) -> bool:
    if is_unknown(value):
        return True
    if isinstance(value, Mapping):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_unknown(v) for v in value)
    return False


def dig(value: Any, *path: str | int) -> Any:
    """The value at `path`, `MISSING` if any step is absent, or the unknown sentinel met on the way."""
    for step in path:
        if is_unknown(value):
            return value
        if isinstance(value, Mapping) and isinstance(step, str):
            value = value.get(step, MISSING)
        elif isinstance(value, (list, tuple)) and isinstance(step, int) and -len(value) <= step < len(value):
            value = value[step]
        else:
            return MISSING
        if value is None:
            return MISSING
    return value


def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type chain>::<name>` -> stack."""
    parts = urn.split("::")
    return parts[0].split(":")[-1] if parts and parts[0].startswith("urn:pulumi:") else ""


@dataclass(frozen=True)
class Resource:
    """What a rule sees of one resource: plain data, unknowns as the engine's sentinels."""

    urn: str
    type: str
    name: str
    props: Mapping[str, Any]
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    parent: str | None = None

    def depends_through(self, prop: str) -> tuple[str, ...]:
        return tuple(self.property_dependencies.get(prop, ()))


class Stack:
    """All resources of one stack, joined by URN (never by cloud IDs: those are unknown at preview)."""

    def __init__(self, resources: Iterable[Resource]):
        self.resources = list(resources)
        self.by_urn = {r.urn: r for r in self.resources}

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def referencing(self, target: Resource, prop: str, *types: str) -> list[Resource]:
        """Resources of `types` whose property `prop` was computed from `target` (property dependency)."""
        return [r for r in self.of_type(*types) if target.urn in r.depends_through(prop)]

    def referenced(self, source: Resource, prop: str, *types: str) -> list[Resource]:
        """Resources of `types` that `source`'s property `prop` was computed from."""
        return [self.by_urn[u] for u in source.depends_through(prop)
                if u in self.by_urn and (not types or self.by_urn[u].type in types)]


@dataclass
class Report:
    """What one rule found: violations (at the rule's level) and what it could not see (advisory)."""

    violations: list[tuple[str, str | None]] = field(default_factory=list)
    unknowns: list[str] = field(default_factory=list)

    def violation(self, message: str, urn: str | None = None) -> None:
        self.violations.append((message, urn))

    def unknown(self, what: str) -> None:
        """`what` is unknown at preview; the rule sees it again when the stack is updated."""
        self.unknowns.append(f"{what}: unknown at preview, checked again at `up`")

    def undecided(self, message: str) -> None:
        """The rule cannot decide for another reason than an unknown value: say why."""
        self.unknowns.append(message)


Check = Callable[[Any, Mapping[str, Any], Report], None]


@dataclass(frozen=True)
class Rule:
    """One policy. `kind` "resource" runs on each resource before it is created (refuses at
    preview and at up); "stack" runs on the whole stack (joins; at up only after creation)."""

    name: str
    description: str
    kind: str
    check: Check
    resource_types: tuple[str, ...] = ()
    """Resource rules only: the types the rule looks at (empty: all)."""
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """JSON-schema properties of the rule's tunables, each with its default."""
    enforcement: crossguard.EnforcementLevel = crossguard.EnforcementLevel.MANDATORY

    def defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.config.items() if "default" in v}

    def evaluate(self, subject: Resource | Stack, config: Mapping[str, Any] | None = None) -> Report:
        """Run the rule directly (no gRPC): the pack and the unit tests both come through here."""
        report = Report()
        if isinstance(subject, Resource) and self.resource_types and subject.type not in self.resource_types:
            return report
        self.check(subject, {**self.defaults(), **(config or {})}, report)
        return report


class UnknownAtPreview(UnknownValueError):
    """Values a rule needs are unknown at preview: the SDK reports this as advisory."""

    def __init__(self, messages: list[str]):
        super().__init__(UNKNOWN_STRING_VALUE, [])
        self.message = "; ".join(messages)


def _plain(props: Any) -> dict:
    return dict(serialize_properties(props)) if props is not None else {}


def _finish(rule: Rule, report: Report, report_violation) -> None:
    for message, urn in report.violations:
        report_violation(message, urn)
    if report.unknowns:
        raise UnknownAtPreview(report.unknowns)


def to_policy(rule: Rule) -> crossguard.Policy:
    schema = crossguard.PolicyConfigSchema(properties=dict(rule.config)) if rule.config else None
    if rule.kind == "resource":
        def validate_resource(args: crossguard.ResourceValidationArgs, report_violation) -> None:
            if rule.resource_types and args.resource_type not in rule.resource_types:
                return
            resource = Resource(urn=args.urn, type=args.resource_type, name=args.name, props=_plain(args.props))
            _finish(rule, rule.evaluate(resource, args.get_config()), report_violation)

        return crossguard.ResourceValidationPolicy(
            name=rule.name, description=rule.description, validate=validate_resource,
            enforcement_level=rule.enforcement, config_schema=schema)
    if rule.kind == "stack":
        def validate_stack(args: crossguard.StackValidationArgs, report_violation) -> None:
            stack = Stack(Resource(
                urn=r.urn, type=r.resource_type, name=r.name, props=_plain(r.props),
                property_dependencies={k: tuple(d.urn for d in v) for k, v in r.property_dependencies.items()},
                parent=r.parent.urn if r.parent else None) for r in args.resources)
            _finish(rule, rule.evaluate(stack, args.get_config()), report_violation)

        return crossguard.StackValidationPolicy(
            name=rule.name, description=rule.description, validate=validate_stack,
            enforcement_level=rule.enforcement, config_schema=schema)
    raise ValueError(f"rule {rule.name}: kind must be 'resource' or 'stack', got {rule.kind!r}")


# -- helpers shared by the domain modules -------------------------------------------------------

def number(value: Any) -> float | None:
    """A Kubernetes-style count ("16", 16, 16.0) as a number; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def label(resource: Resource) -> str:
    """How a message names a resource: its type's last part and its logical name."""
    return f"{resource.type.rsplit(':', 1)[-1]} {resource.name}"
