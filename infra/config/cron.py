"""A CronJob schedule checked as Kubernetes parses it (robfig/cron's standard parser: five
fields or a macro), so a bad schedule fails the preview with the field and the fix, not the apply."""

from __future__ import annotations

import re

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names for 1.. or 0..)
FIELDS: tuple[tuple[str, int, int, tuple[str, ...], int], ...] = (
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day of month", 1, 31, (), 0),
    ("month", 1, 12, _MONTHS, 1),
    ("day of week", 0, 6, _DAYS, 0),
)
_RANGE = re.compile(r"^(?P<base>\*|\?|[0-9a-z]+(-[0-9a-z]+)?)(/(?P<step>[0-9]+))?$")
EXAMPLE = "'0 2 * * *' (02:00 every day) or '@daily'"


def _number(text: str, low: int, high: int, names: tuple[str, ...], first: int) -> int | None:
    if text.isdigit():
        value = int(text)
    elif text in names:
        value = names.index(text) + first
    else:
        return None
    return value if low <= value <= high else None


def _field_problem(text: str, name: str, low: int, high: int, names: tuple[str, ...], first: int) -> str | None:
    # Kubernetes (robfig/cron) also takes 7 for Sunday in the day-of-week field.
    high_here = 7 if name == "day of week" else high
    for part in text.lower().split(","):
        match = _RANGE.match(part)
        if not match:
            return f"{name} {part!r} is not a value, range (a-b), step (*/n, a-b/n) or list"
        base, step = match["base"], match["step"]
        if step is not None and int(step) == 0:
            return f"{name} {part!r}: a step must be at least 1"
        if base in ("*", "?"):
            if base == "?" and name not in ("day of month", "day of week"):
                return f"{name} {part!r}: '?' is only for the day fields"
            continue
        ends = base.split("-")
        values = [_number(end, low, high_here, names, first) for end in ends]
        if None in values:
            allowed = f"{low}-{high_here}" + (f" or {names[0]}..{names[-1]}" if names else "")
            return f"{name} {part!r} is out of range: use {allowed}"
        if len(values) == 2 and values[0] > values[1]:
            return f"{name} {part!r}: a range must go from low to high"
    return None


def schedule_problem(value: str) -> str | None:
    """None for a schedule Kubernetes accepts; else what is wrong and how to write it."""
    text = value.strip()
    if text.startswith("@"):
        return None if text in MACROS else (f"{text!r} is not a schedule macro: use one of {', '.join(MACROS)} "
                                            f"or five fields such as {EXAMPLE}")
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        return "a time zone inside the schedule is refused by Kubernetes: the CronJob runs in UTC; write the UTC time"
    parts = text.split()
    if len(parts) != 5:
        return (f"{value!r} has {len(parts)} field(s): a schedule is five fields (minute hour day-of-month month "
                f"day-of-week), e.g. {EXAMPLE}")
    for part, (name, low, high, names, first) in zip(parts, FIELDS):
        problem = _field_problem(part, name, low, high, names, first)
        if problem:
            return f"{problem} (in {value!r}; e.g. {EXAMPLE})"
    return None
