"""Turning outside events into decisions at step boundaries: stop requests and hang detection.

A SIGTERM (pod deletion, node drain, torchrun restarting workers for a new member) only sets
a flag; the ranks agree on it at the next step boundary, so all of them save the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM (or any caller); read once per step by the training loop."""

    def __init__(self) -> None:
        self._reason: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def requested(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason


class CheckpointRequest:
    """Set by a rebalance recommendation: checkpoint at the next step boundary, keep training.

    Requests are counted, so one that arrives while the requested checkpoint is being written
    is not lost: `served(generation)` clears only what the step's vote saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked = 0
        self._served = 0
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        with self._lock:
            self._asked += 1
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self._asked > self._served

    @property
    def generation(self) -> int:
        """How many requests have arrived: what a step's vote saw."""
        return self._asked

    def served(self, generation: int) -> None:
        """The requests up to `generation` are checkpointed; later ones stay pending."""
        with self._lock:
            self._served = max(self._served, generation)


class StepWatchdog:
    """Ends the process when no progress is reported for `timeout_s`.

    A peer that vanished without closing its sockets can leave a collective waiting far
    longer than its timeout in some code paths; this is the backstop. Start-up (imports,
    process group, checkpoint load) is judged by its own, longer timeout: the owner lowers
    `timeout_s` to the step timeout after the first step.
    """

    def __init__(self, timeout_s: float, on_hang: Callable[[float], None], poll_s: float = 0.5):
        self.timeout_s = timeout_s
        self._on_hang = on_hang
        self._poll_s = min(poll_s, timeout_s / 4)
        self._last_beat = time.monotonic()
        self._armed = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tensile-step-watchdog", daemon=True)

    def start(self) -> "StepWatchdog":
        self._thread.start()
        return self

    def beat(self) -> None:
        self._last_beat = time.monotonic()
        self._armed = True

    def pause(self) -> None:
        """Not judged until the next beat (e.g. while a checkpoint is written)."""
        self._armed = False

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self._poll_s):
            silent = time.monotonic() - self._last_beat
            if self._armed and silent > self.timeout_s:
                self._on_hang(silent)
                return


def exit_now(code: int) -> None:
    """Leave without running atexit handlers or joining threads: a hung collective holds them."""
    logging.shutdown()
    os._exit(code)
