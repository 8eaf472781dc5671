"""Reading raw stack-config values: a Reader that records every problem with its property path
instead of stopping at the first, and the value checks the section parsers share."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

from infra.config.types import Problem

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
RESERVATION_ID = re.compile(r"^cr-[0-9a-z]+$")
ZONE_ID = re.compile(r"^[a-z]+[0-9]+(-[a-z]+[0-9]+)?-az[0-9]+$")
"""An AZ ID (`use1-az1`): the same physical zone in every account, unlike a zone's name."""
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
DURATION = re.compile(r"^\d+(s|m|h)$")
# An image reference pinned to a tag or digest (never `:latest`, never untagged).
PINNED_IMAGE = re.compile(r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$")


def role_arn_problem(value: str) -> str | None:
    return None if ROLE_ARN.match(value) else f"must be an IAM role ARN such as arn:aws:iam::111122223333:role/ml-team (got {value!r})"


def image_problem(value: str) -> str | None:
    if value.endswith(":latest"):
        return f"must pin a version, not :latest (got {value!r})"
    return None if PINNED_IMAGE.match(value) else f"must be registry/repository:tag or @sha256:digest (got {value!r})"


class Reader:
    """Reads raw values, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        """What previews with a warning: allowed, but worth the operator's attention."""

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason))

    def warning(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}")

    def section(self, raw: Any, path: str, known: set[str], *, required: bool = True) -> dict:
        if raw is None:
            if required:
                self.problem(path, "is required: add this section to the stack file")
            return {}
        if not isinstance(raw, Mapping):
            self.problem(path, f"must be a mapping, got {type(raw).__name__}")
            return {}
        for key in sorted(set(raw) - known):
            self.problem(f"{path}.{key}", f"unknown setting: expected one of {', '.join(sorted(known))}")
        return dict(raw)

    def value(self, obj: Mapping, key: str, path: str, kind: type | tuple[type, ...], default: Any = ...,
              check: Callable[[Any], str | None] | None = None) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in obj or obj[key] is None:
            if default is ...:
                self.problem(where, "is required")
                return None
            return default
        value = obj[key]
        # YAML gives ints for whole numbers; a float setting accepts them. bool is not an int here.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            self.problem(where, f"must be {_kind_name(kind)}, got {value!r}")
            return None
        if not isinstance(value, kind):
            self.problem(where, f"must be {_kind_name(kind)}, got {value!r}")
            return None
        if check is not None:
            reason = check(value)
            if reason:
                self.problem(where, reason)
        return value

    def strings(self, obj: Mapping, key: str, path: str, default: Any = ...,
                check: Callable[[str], str | None] | None = None) -> tuple[str, ...]:
        where = f"{path}.{key}" if path else key
        items = self.value(obj, key, path, list, default)
        if items is None:
            return ()
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.problem(f"{where}[{i}]", f"must be a string, got {item!r}")
                continue
            if check is not None and (reason := check(item)):
                self.problem(f"{where}[{i}]", reason)
            out.append(item)
        return tuple(out)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0 (got {value})"


def at_least(minimum: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= minimum else f"must be >= {minimum} (got {v})"


def one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)} (got {v!r})"


def cidr_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return f"must be a CIDR block such as 203.0.113.0/24 (got {value!r})"
    return None
