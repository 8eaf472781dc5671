"""A loopback HTTP reverse proxy that breaks chosen requests on cue, for testing S3 clients.

It sits between boto3 and a loopback S3 server (moto) and follows a script of faults: each names
the requests it matches (method, a regex on path and query) and which of them it breaks (the Nth
match on, for `times` matches, or every k-th match: a deterministic rate).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HTTP_ERROR = "http_error"
"""Answer with an S3 XML error (500 InternalError, 503 SlowDown, ...); the server never sees it."""
RESET_BEFORE_RESPONSE = "reset_before_response"
"""Read the request, then reset the connection; the server never sees it."""
RESET_MID_REQUEST = "reset_mid_request"
"""Read half the request body, then reset the connection; the server never sees it."""
RESET_MID_BODY = "reset_mid_body"
"""Forward the request, send the response headers and half its body, then reset."""
RESET_AFTER_UPSTREAM = "reset_after_upstream"
"""Forward the request (the server acts on it), then reset: the client never learns it worked."""
STALL = "stall"
"""Read the request, wait `stall_s` (longer than the client's read timeout), then drop the
connection; the server never sees it."""
KINDS = frozenset({HTTP_ERROR, RESET_BEFORE_RESPONSE, RESET_MID_REQUEST, RESET_MID_BODY, RESET_AFTER_UPSTREAM, STALL})

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect",
                         "proxy-authorization", "proxy-authenticate", "server", "date"})


@dataclass(kw_only=True)
class Fault:
    kind: str
    method: str | None = None
    """HTTP method to match (GET, PUT, POST, HEAD, DELETE); None matches any."""
    target: str = ""
    """Regex searched in the request target, path and query (`uploadId=.*partNumber=2`)."""
    nth: int = 1
    """The first matching request to break, counting from 1."""
    times: int = 1
    """How many matching requests to break from the nth on."""
    every: int | None = None
    """Instead of nth/times: break every k-th matching request."""
    status: int = 500
    code: str = "InternalError"
    message: str = "We encountered an internal error. Please try again."
    stall_s: float = 0.0
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)
    first_fired: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Fault.kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.nth < 1 or self.times < 1 or (self.every is not None and self.every < 1):
            raise ValueError(f"Fault needs nth, times and every >= 1, got nth={self.nth} times={self.times} "
                             f"every={self.every}")

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.target, target) is not None

    def count_and_decide(self) -> bool:
        """Count one more matching request; True if this one is to be broken."""
        self.matched += 1
        if self.every is not None:
            return self.matched % self.every == 0
        return self.nth <= self.matched < self.nth + self.times


def slow_down(**match) -> Fault:
    return Fault(kind=HTTP_ERROR, status=503, code="SlowDown", message="Please reduce your request rate.", **match)


def internal_error(**match) -> Fault:
    return Fault(kind=HTTP_ERROR, status=500, code="InternalError", **match)


class FaultProxy:
    """`url` forwards to `upstream`; `inject` adds faults; `requests` records what passed."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, str | None]] = []
        """(method, target, fault kind or None) of every request, in arrival order."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def fault_for(self, method: str, target: str) -> Fault | None:
        """The fault to apply to this request (the first scripted one that fires), recorded."""
        with self._lock:
            chosen = None
            for fault in self.faults:
                if fault.matches(method, target) and fault.count_and_decide() and chosen is None:
                    chosen = fault
            if chosen is not None:
                chosen.fired += 1
                chosen.first_fired.set()
            self.requests.append((method, target, chosen.kind if chosen else None))
            return chosen

    def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        """(status, headers, body) of the upstream server's answer."""
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body or method in ("PUT", "POST"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered

        def log_message(self, *args) -> None:  # quiet
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (OSError, ValueError):  # the client gave up (after a stall), or we reset on purpose
                self.close_connection = True

        def do_GET(self) -> None:
            self._proxy()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _proxy(self) -> None:
            fault = proxy.fault_for(self.command, self.path)
            kind = fault.kind if fault else None
            if kind == RESET_MID_REQUEST:
                self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
                return self._reset()
            body = self._read_body()
            if kind == STALL:
                time.sleep(fault.stall_s)
                return self._reset()
            if kind == HTTP_ERROR:
                return self._send_s3_error(fault)
            if kind == RESET_BEFORE_RESPONSE:
                return self._reset()
            status, headers, payload = proxy.forward(self.command, self.path, self.headers.items(), body)
            if kind == RESET_AFTER_UPSTREAM:
                return self._reset()
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if kind == RESET_MID_BODY:
                self.wfile.write(payload[:len(payload) // 2])
                return self._reset()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send_s3_error(self, fault: Fault) -> None:
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                       f"<Message>{fault.message}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _reset(self) -> None:
            """Close with a TCP RST (SO_LINGER 0), not a FIN: the client sees a connection reset."""
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.wfile.close()
            self.rfile.close()
            self.connection.close()

    return Handler
