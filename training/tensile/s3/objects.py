"""One bucket and key prefix on S3, reached through boto3 with retries at two levels: botocore's
own (5xx, SlowDown, throttling, failed connections) and Tensile's around whole operations
(a response body cut off mid-stream, which botocore hands back to the caller unretried)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionError as BotocoreConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)

from tensile.s3.retry import RetryPolicy, call_with_retries

log = logging.getLogger(__name__)
Result = TypeVar("Result")

MIN_PART_SIZE = 5 << 20
"""S3 refuses multipart parts smaller than 5 MiB (all but the last)."""
MAX_PARTS = 10_000
"""S3's limit on parts in one multipart upload."""
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
"""Error codes of a key that is not there (HeadObject has no body, so its code is the status)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    multipart_threshold_bytes: int = 64 << 20
    """Files this large or larger go up as multipart uploads; smaller ones in one PutObject."""
    part_size_bytes: int = 64 << 20
    """Size of each part (raised for huge files so a file needs at most 10,000 parts)."""
    max_concurrency: int = 4
    """Parts in flight per file; memory held is about (max_concurrency + 1) × part_size_bytes."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    """A request whose response stalls longer than this is abandoned and retried."""
    retry_mode: str = "standard"
    """botocore's retry mode: "standard" or "adaptive" (adds client-side rate limiting)."""
    client_attempts: int = 5
    """botocore's attempts per request, the first included."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Tensile's retries of whole operations, for failures botocore does not retry."""

    def __post_init__(self) -> None:
        if self.part_size_bytes < MIN_PART_SIZE:
            raise ValueError(f"S3Settings.part_size_bytes must be at least {MIN_PART_SIZE} (5 MiB, "
                             f"S3's minimum part), got {self.part_size_bytes}")
        if self.multipart_threshold_bytes < 1:
            raise ValueError(f"S3Settings.multipart_threshold_bytes must be positive, "
                             f"got {self.multipart_threshold_bytes}")
        if self.max_concurrency < 1:
            raise ValueError(f"S3Settings.max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"S3Settings.retry_mode must be 'standard' or 'adaptive', got {self.retry_mode!r}")
        if self.client_attempts < 1:
            raise ValueError(f"S3Settings.client_attempts must be at least 1, got {self.client_attempts}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix") of `s3://bucket/prefix` (the prefix may be empty)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise ValueError(f"an S3 location looks like s3://bucket/prefix, got {url!r}")
    return bucket, prefix.strip("/")


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: Exception) -> bool:
    return isinstance(error, ClientError) and error_code(error) in MISSING_CODES


def is_transient(error: Exception) -> bool:
    """Failures of the connection or of a streamed body: the same request may well succeed.

    HTTP errors (5xx, SlowDown) are not here: botocore has already retried those.
    """
    return isinstance(error, (BotocoreConnectionError, HTTPClientError, ResponseStreamingError,
                              IncompleteReadError, ConnectionError))


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def make_client(endpoint_url: str | None, settings: S3Settings):
    """An S3 client; with no endpoint_url, boto3 honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.

    Clients come from one session per process, as boto3.client() does: loading S3's service model
    costs about 0.2 s per session. A session is not safe to share while creating clients; the
    clients themselves are.
    """
    global _session
    config = Config(retries={"mode": settings.retry_mode, "total_max_attempts": settings.client_attempts},
                    connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
                    max_pool_connections=max(10, 2 * settings.max_concurrency))
    with _session_lock:
        _session = _session or boto3.session.Session()
        client = _session.client("s3", endpoint_url=endpoint_url, config=config)
    _log_client_retries(client, settings.client_attempts)
    return client


def _log_client_retries(client, attempts: int) -> None:
    """botocore logs its own retries only at DEBUG; say each one at WARNING, with the cause.

    `needs-retry` sees why a request failed, `request-created` sees that a retry is being sent;
    the request's context carries the cause from one to the other.
    """
    def remember_cause(request_dict, response, caught_exception, **_):
        if caught_exception is not None:
            cause = f"{type(caught_exception).__name__}: {caught_exception}"
        elif response is not None:
            parsed = response[1]
            status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cause = f"HTTP {status} {parsed.get('Error', {}).get('Code', '')}".rstrip()
        else:
            return None
        request_dict["context"]["tensile_retry_cause"] = cause
        return None  # observe only: botocore's handler decides whether to retry

    def announce_retry(request, operation_name, **_):
        attempt = request.context.get("retries", {}).get("attempt", 1)
        if attempt > 1:
            log.warning("S3 %s: botocore retrying, attempt %d of %d, after %s", operation_name, attempt,
                        attempts, request.context.get("tensile_retry_cause", "a failure"))

    client.meta.events.register("needs-retry.s3", remember_cause)
    client.meta.events.register("request-created.s3", announce_retry)


class S3Objects:
    """Keys under `s3://bucket/prefix/`, read and written with both levels of retries."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, settings: S3Settings | None = None):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(url)
        self.settings = settings or S3Settings()
        self.client = make_client(endpoint_url, self.settings)

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def retrying(self, operation: str, call: Callable[[], Result],
                 is_transient: Callable[[Exception], bool] = is_transient) -> Result:
        return call_with_retries(f"S3 {operation}", call, policy=self.settings.retry, is_transient=is_transient)

    def get(self, key: str, byte_range: str | None = None) -> bytes:
        """The object's bytes (or a `bytes=a-b` range of them); a body cut off is fetched again."""
        extra = {"Range": byte_range} if byte_range else {}

        def get_whole_body() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()
        return self.retrying(f"GetObject {key}", get_whole_body)

    def put(self, key: str, body: bytes, **conditions: str) -> None:
        self.retrying(f"PutObject {key}",
                      lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **conditions))

    def listing(self, *parts: str) -> tuple[list[str], list[str]]:
        """(folders, objects) directly under `prefix/parts.../`, like listing a directory."""
        folder = self.key(*parts) + "/"

        def list_all() -> tuple[list[str], list[str]]:
            folders, objects = [], []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                folders += [p["Prefix"][len(folder):].rstrip("/") for p in page.get("CommonPrefixes", [])]
                objects += [o["Key"][len(folder):] for o in page.get("Contents", [])]
            return folders, objects
        return self.retrying(f"ListObjectsV2 {folder}", list_all)

    def keys_under(self, folder: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            yield from (o["Key"] for o in page.get("Contents", []))
