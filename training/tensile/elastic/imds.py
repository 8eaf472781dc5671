"""The optional spot-notice watcher: polls the instance metadata service (IMDSv2) in the background.

A pod reaches IMDS only when the node's hop limit is at least 2 (hardened clusters set 1), so
the watcher is off unless configured. An interruption notice asks the job to checkpoint and
leave; a rebalance recommendation asks for a checkpoint now while training goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL_S = 21600


class MetadataClient:
    """IMDSv2: a session token first (PUT), then reads that carry it; a 401 renews the token."""

    def __init__(self, endpoint: str, timeout_s: float = 1.0):
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _renew_token(self) -> str:
        request = urllib.request.Request(self.endpoint + TOKEN_PATH, method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            self._token = response.read().decode().strip()
        return self._token

    def get_json(self, path: str) -> dict | None:
        """The document at path, or None when IMDS answers 404 (nothing to report)."""
        for attempt in range(2):
            token = self._token or self._renew_token()
            request = urllib.request.Request(self.endpoint + path, headers={"X-aws-ec2-metadata-token": token})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                if e.code == 401 and attempt == 0:
                    self._token = None
                    continue
                raise
        return None


class SpotNoticeWatcher:
    """Calls on_interruption once per notice and on_rebalance once per recommendation."""

    def __init__(self, endpoint: str, *, poll_s: float, on_interruption: Callable[[dict], None],
                 on_rebalance: Callable[[dict], None]):
        self.client = MetadataClient(endpoint)
        self.poll_s = poll_s
        self._on_interruption = on_interruption
        self._on_rebalance = on_rebalance
        self._seen_rebalance: str | None = None
        self._interrupted = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensile-spot-notice", daemon=True)

    def start(self) -> "SpotNoticeWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def poll_once(self) -> None:
        action = self.client.get_json(INSTANCE_ACTION_PATH)
        if action and not self._interrupted:
            self._interrupted = True
            self._on_interruption(action)
        rebalance = self.client.get_json(REBALANCE_PATH)
        if rebalance and rebalance.get("noticeTime") != self._seen_rebalance:
            self._seen_rebalance = rebalance.get("noticeTime")
            self._on_rebalance(rebalance)

    def _run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception as e:  # noqa: BLE001 - a metadata hiccup must never stop training
                log.debug("metadata poll failed: %s", e)
