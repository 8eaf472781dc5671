"""What only real S3 can show about the S3 tier: conditional writes are atomic under true
concurrency, and a repeated CompleteMultipartUpload is taken as done. Skipped unless
TENSILE_S3_CONFORMANCE_URL names a prefix in a real bucket (docs/design/s3-tier.md says how)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid

import pytest

from tensile.checkpoint import CommitRecord, FencingError
from tensile.s3.objects import S3Settings
from tensile.checkpoint.s3_tier import S3Tier

URL = os.environ.get("TENSILE_S3_CONFORMANCE_URL", "")
pytestmark = [pytest.mark.full,
              pytest.mark.skipif(not URL.startswith("s3://"), reason="TENSILE_S3_CONFORMANCE_URL is not set")]
MiB = 1 << 20


@pytest.fixture
def tier():
    """A fresh prefix under the given one, deleted afterwards."""
    tier = S3Tier(f"{URL.rstrip('/')}/{uuid.uuid4().hex}",
                  settings=S3Settings(multipart_threshold_bytes=5 * MiB, part_size_bytes=5 * MiB))
    yield tier
    objects = tier.objects
    keys = list(objects.keys_under(objects.key() + "/"))
    for start in range(0, len(keys), 1000):
        objects.client.delete_objects(Bucket=objects.bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


def test_aws_conditional_publish_has_exactly_one_winner_under_true_concurrency(tier):
    logs = [S3Tier(tier.url).commit_log for _ in range(16)]
    for seq in range(1, 11):
        barrier, winners, losers = threading.Barrier(len(logs)), [], []

        def publish(group: int) -> None:
            barrier.wait()
            try:
                logs[group].publish(CommitRecord(seq=seq, checkpoint_id=f"c{group}", step=seq,
                                                 group_token=f"{group:032d}"))
                winners.append(group)
            except FencingError:
                losers.append(group)
        threads = [threading.Thread(target=publish, args=(g,)) for g in range(len(logs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and len(losers) == len(logs) - 1, (seq, winners, losers)
        assert tier.commit_log.read(seq).group_token == f"{winners[0]:032d}"


def test_aws_multipart_round_trip_and_a_repeated_completion_is_accepted(tier, tmp_path):
    payload = os.urandom(11 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    entry = tier.put_file("ckpt", "big.bin", source)
    assert entry.sha256 == hashlib.sha256(payload).hexdigest()
    assert tier.read_range("ckpt", "big.bin", 5 * MiB - 3, 6) == payload[5 * MiB - 3:5 * MiB + 3]
    tier.fetch_file("ckpt", "big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
    # botocore resends a CompleteMultipartUpload whose reply was lost: S3 must answer it as done.
    client, bucket, key = tier.objects.client, tier.objects.bucket, tier.objects.key("checkpoints", "ckpt", "twice")
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 10)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=parts)
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=parts)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x" * 10
