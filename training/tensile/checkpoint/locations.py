"""Which tier a checkpoint location names: `s3://bucket/prefix` is S3, anything else a directory."""

from __future__ import annotations

import os

from tensile.checkpoint.api import Tier
from tensile.checkpoint.directory_tier import DirectoryTier


def open_tier(location: str | os.PathLike, *, endpoint_url: str | None = None) -> Tier:
    """The tier at `location`. For S3 without `endpoint_url`, boto3 itself honours
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (a loopback server in tests, an S3-compatible store)."""
    location = os.fspath(location)
    if location.startswith("s3://"):
        from tensile.checkpoint.s3_tier import S3Tier  # boto3 loads only for runs that use S3

        return S3Tier(location, endpoint_url=endpoint_url)
    if endpoint_url is not None:
        raise ValueError(f"endpoint_url={endpoint_url!r} applies to s3:// locations only; "
                         f"{location!r} is a directory")
    return DirectoryTier(location)
