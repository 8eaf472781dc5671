"""Retries with exponential backoff and full jitter, for transient failures that the storage
client does not retry itself (a connection reset while a response body streams, say)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included."""
    base_delay_s: float = 0.5
    """The cap on the first wait; the cap doubles with each failure."""
    max_delay_s: float = 20.0
    """No wait is longer than this."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError(f"RetryPolicy needs 0 <= base_delay_s <= max_delay_s, got "
                             f"base_delay_s={self.base_delay_s} max_delay_s={self.max_delay_s}")

    def delay_s(self, failures: int) -> float:
        """Full jitter: uniform over [0, cap], so clients that failed together spread out."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1)))


def call_with_retries(operation: str, call: Callable[[], Result], *, policy: RetryPolicy,
                      is_transient: Callable[[Exception], bool]) -> Result:
    """`call()`, again after a backoff while it fails transiently; the last failure is raised.

    `call` must be safe to repeat from the start (a whole object's download, not its tail).
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as e:
            if attempt == policy.attempts or not is_transient(e):
                raise
            delay = policy.delay_s(attempt)
            log.warning("%s failed on attempt %d of %d (%s: %s); retrying in %.2f s",
                        operation, attempt, policy.attempts, type(e).__name__, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
