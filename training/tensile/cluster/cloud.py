"""The scaler's two cloud inputs: current spot prices (EC2 DescribeSpotPriceHistory, per pool's
instance types) and each run's progress on its S3 checkpoint tier (the manifests' step, world
size and time), both through boto3 with the controller's own IAM role.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import boto3
from botocore.config import Config

from tensile.checkpoint.s3_tier import S3Tier
from tensile.cluster.observe import CheckpointPoint

log = logging.getLogger(__name__)

PRICE_TTL_S = 300.0
"""Spot prices move at most every few minutes: one query per pool per five minutes is enough."""
FAILED_PRICE_TTL_S = 60.0
"""After a failed query the price is unknown for this long before the next try (a backoff)."""
MANIFESTS_READ = 8
"""The newest checkpoints read per pass (retention keeps a few; older ones were measured before)."""


class SpotPrices:
    """The lowest current Linux spot price per node of a pool's instance types in the region
    (the price a new node would be offered at), or None where EC2 quotes none or cannot be asked."""

    def __init__(self, region: str, *, clock: Callable[[], float], client=None,
                 on_error: Callable[[Exception], None] = lambda e: None):
        self.on_error = on_error
        self.client = client or boto3.client("ec2", region_name=region,
                                              config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
        self.clock = clock
        self._cache: dict[tuple[str, ...], tuple[float, float | None]] = {}

    def price(self, instance_types: Sequence[str]) -> float | None:
        key = tuple(sorted(instance_types))
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            price = self._query(key, now)
            self._cache[key] = (now + PRICE_TTL_S, price)
        except Exception as e:  # noqa: BLE001 - any failure of the query leaves the price unknown
            log.warning("spot prices of %s unknown: %s", ", ".join(key), e)
            self._cache[key] = (now + FAILED_PRICE_TTL_S, None)
            self.on_error(e)
            return None
        return price

    def _query(self, instance_types: tuple[str, ...], now: float) -> float | None:
        latest: dict[tuple[str, str], tuple[dt.datetime, float]] = {}
        pages = self.client.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=list(instance_types), ProductDescriptions=["Linux/UNIX"],
            StartTime=dt.datetime.fromtimestamp(now, dt.timezone.utc))
        for page in pages:
            for entry in page.get("SpotPriceHistory", []):
                key = (entry["InstanceType"], entry.get("AvailabilityZone", ""))
                stamp = entry.get("Timestamp") or dt.datetime.fromtimestamp(0, dt.timezone.utc)
                if key not in latest or stamp >= latest[key][0]:
                    latest[key] = (stamp, float(entry["SpotPrice"]))
        prices = [price for _, price in latest.values() if price > 0]
        return min(prices) if prices else None


class CheckpointProgress:
    """The newest published checkpoints of one run, read from its commit log and manifests
    (manifests never change once written: each is read once)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None):
        self.tier = S3Tier(url, endpoint_url=endpoint_url)
        self._points: dict[str, CheckpointPoint] = {}

    def points(self) -> list[CheckpointPoint]:
        out = []
        for _, record, _ in self.tier.commit_log.newest_first():
            if len(out) == MANIFESTS_READ:
                break
            if record is None:
                continue
            point = self._points.get(record.checkpoint_id)
            if point is None:
                try:
                    manifest = self.tier.read_manifest(record.checkpoint_id)
                except Exception as e:  # noqa: BLE001 - pruned or unreadable: measure from the others
                    log.debug("checkpoint %s skipped: %s", record.checkpoint_id, e)
                    continue
                point = CheckpointPoint(checkpoint_id=manifest.checkpoint_id, step=manifest.step,
                                        world_size=manifest.world_size, created_at=manifest.created_at,
                                        reason=manifest.reason)
                self._points[record.checkpoint_id] = point
            out.append(point)
        return out
