"""A loopback stand-in for the EC2 instance metadata service, speaking IMDSv2's token protocol
(for the tests and the benchmarks; nothing in a real run uses it)."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MetadataServer:
    """Serves 404 until told of a rebalance recommendation or an interruption notice."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.documents: dict[str, dict] = {}
        self.requests: list[tuple[str, str, bool]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
                    self.send_response(400)
                    self.end_headers()
                    return
                token = secrets.token_hex(16)
                server.tokens.add(token)
                self._reply(200, token.encode())

            def do_GET(self) -> None:
                authorised = self.headers.get("X-aws-ec2-metadata-token") in server.tokens
                server.requests.append(("GET", self.path, authorised))
                if not authorised:
                    self._reply(401, b"")
                elif self.path in server.documents:
                    self._reply(200, json.dumps(server.documents[self.path]).encode())
                else:
                    self._reply(404, b"")

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def rebalance(self, notice_time: str = "2026-11-28T12:00:00Z") -> None:
        self.documents["/latest/meta-data/events/recommendations/rebalance"] = {"noticeTime": notice_time}

    def interrupt(self, action: str = "terminate", time: str = "2026-11-28T12:02:00Z") -> None:
        self.documents["/latest/meta-data/spot/instance-action"] = {"action": action, "time": time}

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def __enter__(self) -> "MetadataServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
