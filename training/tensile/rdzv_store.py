"""The rendezvous store as its own process: it must outlive every (spot) worker node.

In a cluster it runs as a small pod on the on-demand system nodes; here, one local process.
"""

from __future__ import annotations

import signal
import threading
from datetime import timedelta

from torch.distributed import TCPStore


def serve(host: str, port: int, ready: threading.Event | None = None) -> None:
    """Host a multi-tenant TCPStore until SIGTERM/SIGINT."""
    store = TCPStore(host, port, is_master=True, multi_tenant=True, wait_for_workers=False,
                     timeout=timedelta(seconds=60))
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"rendezvous store listening on {host}:{store.port}", flush=True)
    if ready:
        ready.set()
    stopped.wait()
