"""The S3 tier against a real S3 protocol server (moto, over loopback), with faults injected by a
proxy in between; the tier contract tests run against DirectoryTier too."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.retries.standard import ExponentialBackoff

from fault_proxy import (HTTP_ERROR, RESET_AFTER_UPSTREAM, RESET_BEFORE_RESPONSE, RESET_MID_BODY,
                         RESET_MID_REQUEST, STALL, Fault, internal_error, slow_down)
from tensile.checkpoint import (Catalog, CheckpointCorrupt, CommitRecord, DirectoryTier, FencingError, Manifest,
                                open_tier)
from tensile.checkpoint.api import EpochClaim, Tier, TierCommitLog
from tensile.checkpoint.catalog import checkpoint_id_for
from tensile.checkpoint.commit_log import CommitLog
from tensile.s3.retry import RetryPolicy, call_with_retries
from tensile.s3.objects import S3Settings, parse_s3_url
from tensile.checkpoint.chunks import CHUNK_BYTES, hash_bytes
from tensile.checkpoint.s3_tier import S3CommitLog, S3Tier

MiB = 1 << 20
FAST_RETRIES = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def _s3_tier(bucket: str, endpoint: str, **settings) -> S3Tier:
    return S3Tier(f"s3://{bucket}/runs/r1", endpoint_url=endpoint,
                  settings=S3Settings(retry=FAST_RETRIES, **settings))


@pytest.fixture(autouse=True)
def quick_throttling_backoff(monkeypatch):
    """botocore waits up to 1 s, doubling, after a SlowDown; 20 ms keeps these tests quick."""
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.02)


@pytest.fixture(params=["directory", "s3"])
def tier(request, tmp_path):
    """Each tier contract test runs on both tiers."""
    if request.param == "directory":
        return DirectoryTier(tmp_path / "shared")
    return _s3_tier(request.getfixturevalue("bucket"), request.getfixturevalue("moto_url"))


def _file(tmp_path: Path, name: str, payload: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def _save(tier, tmp_path: Path, step: int, token: str, *, parent: str | None = None,
          branch: str = "", payload: bytes | None = None) -> Manifest:
    checkpoint_id = checkpoint_id_for(step, token)
    payload = payload if payload is not None else f"weights at {step}".encode()
    entry = tier.put_file(checkpoint_id, "state/model.pt", _file(tmp_path, f"{checkpoint_id}.pt", payload))
    manifest = Manifest(checkpoint_id=checkpoint_id, parent_id=parent, step=step, world_size=2, zero_stage=2,
                        files=(entry,), config_hash="c", data_version="d", branch=branch)
    tier.write_manifest(manifest)
    return manifest


def _commit(tier, tmp_path: Path, seq: int, step: int, token: str = "a" * 32, **kwargs) -> Manifest:
    manifest = _save(tier, tmp_path, step, token, **kwargs)
    tier.commit_log.publish(CommitRecord(seq=seq, checkpoint_id=manifest.checkpoint_id, step=step,
                                         group_token=token))
    return manifest


@functools.cache
def _raw_client(moto_url: str):
    """A plain client, to look behind the tier's back."""
    return boto3.client("s3", endpoint_url=moto_url)


# --- the tier contract, on both tiers -------------------------------------------------------------
def test_tier_put_list_read_verify_delete_round_trip(tier, tmp_path):
    payload = os.urandom(3000)
    manifest = _save(tier, tmp_path, 10, "a" * 32, payload=payload)
    assert manifest.files[0].size == 3000
    assert manifest.files[0].sha256 == hashlib.sha256(payload).hexdigest()
    assert tier.list_checkpoint_ids() == [manifest.checkpoint_id]
    assert tier.read_manifest(manifest.checkpoint_id) == manifest
    tier.verify(manifest)
    tier.delete_checkpoint(manifest.checkpoint_id)
    assert tier.list_checkpoint_ids() == []
    with pytest.raises(CheckpointCorrupt, match="no manifest"):
        tier.read_manifest(manifest.checkpoint_id)


def test_tier_records_each_chunks_sha256_and_checks_sizes_without_reading(tier, tmp_path):
    payload = os.urandom(CHUNK_BYTES * 2 + 100)
    manifest = _save(tier, tmp_path, 10, "a" * 32, payload=payload)
    assert manifest.files[0].chunks == hash_bytes("state/model.pt", payload).chunks and manifest.files[0].chunked
    tier.verify(manifest, contents=False)
    wrong = replace(manifest, files=(replace(manifest.files[0], size=len(payload) + 1),))
    with pytest.raises(CheckpointCorrupt, match="has .* bytes, manifest says"):
        tier.verify(wrong, contents=False)
    gone = replace(manifest, files=(replace(manifest.files[0], path="state/gone.pt"),))
    with pytest.raises(CheckpointCorrupt, match="state/gone.pt is missing"):
        tier.verify(gone, contents=False)


def test_tier_bad_marks_round_trip(tier, tmp_path):
    manifest = _save(tier, tmp_path, 10, "a" * 32)
    assert tier.bad_mark(manifest.checkpoint_id) is None
    tier.mark_bad(manifest.checkpoint_id, {"reason": "rank 1: chunk 3 fails its sha256 check"})
    assert tier.bad_mark(manifest.checkpoint_id) == {"reason": "rank 1: chunk 3 fails its sha256 check"}
    tier.delete_checkpoint(manifest.checkpoint_id)
    assert tier.bad_mark(manifest.checkpoint_id) is None


def test_s3_multipart_upload_hashes_chunks_across_part_boundaries(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url, multipart_threshold_bytes=5 * MiB, part_size_bytes=5 * MiB)
    payload = os.urandom(11 * MiB + 7)  # parts of 5 MiB, chunks of 4 MiB
    entry = tier.put_file("ckpt", "shard.bin", _file(tmp_path, "shard", payload))
    assert entry == hash_bytes("shard.bin", payload)


def test_tier_empty_file_round_trips(tier, tmp_path):
    entry = tier.put_file("ckpt", "empty.bin", _file(tmp_path, "empty", b""))
    assert (entry.size, entry.sha256) == (0, hashlib.sha256(b"").hexdigest())
    tier.fetch_file("ckpt", "empty.bin", tmp_path / "out" / "empty.bin")
    assert (tmp_path / "out" / "empty.bin").read_bytes() == b""


def test_tier_read_range_returns_exactly_the_bytes_asked_for(tier, tmp_path):
    payload = os.urandom(10_000)
    tier.put_file("ckpt", "state/shard.bin", _file(tmp_path, "shard", payload))
    assert tier.read_range("ckpt", "state/shard.bin", 0, 1) == payload[:1]
    assert tier.read_range("ckpt", "state/shard.bin", 1234, 4321) == payload[1234:1234 + 4321]
    assert tier.read_range("ckpt", "state/shard.bin", 9000, 1000) == payload[9000:]
    assert tier.read_range("ckpt", "state/shard.bin", 500, 0) == b""


def test_tier_read_range_past_the_end_or_of_a_missing_file_is_corrupt(tier, tmp_path):
    tier.put_file("ckpt", "shard.bin", _file(tmp_path, "shard", b"x" * 100))
    with pytest.raises(CheckpointCorrupt, match=r"shard.bin ends before bytes 90\.\.110 \(got 10 of 20\)"):
        tier.read_range("ckpt", "shard.bin", 90, 20)
    with pytest.raises(CheckpointCorrupt, match=r"got 0 of 5"):
        tier.read_range("ckpt", "shard.bin", 200, 5)
    with pytest.raises(CheckpointCorrupt, match="ckpt: other.bin is missing"):
        tier.read_range("ckpt", "other.bin", 0, 5)
    with pytest.raises(ValueError, match="offset=-1"):
        tier.read_range("ckpt", "shard.bin", -1, 5)


def test_tier_fetch_file_downloads_whole_and_leaves_no_partial(tier, tmp_path):
    payload = os.urandom(50_000)
    tier.put_file("ckpt", "state/model.pt", _file(tmp_path, "model", payload))
    target = tmp_path / "local" / "model.pt"
    tier.fetch_file("ckpt", "state/model.pt", target)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    with pytest.raises(CheckpointCorrupt, match="ckpt: state/gone.pt is missing"):
        tier.fetch_file("ckpt", "state/gone.pt", tmp_path / "local" / "gone.pt")
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]


def test_tier_manifest_less_checkpoint_is_listed_but_never_resumed(tier, tmp_path):
    committed = _commit(tier, tmp_path, 1, 10)
    orphan = checkpoint_id_for(20, "b" * 32)
    tier.put_file(orphan, "state/model.pt", _file(tmp_path, "orphan", b"half a save"))
    tier.commit_log.publish(CommitRecord(seq=2, checkpoint_id=orphan, step=20, group_token="b" * 32))
    assert orphan in tier.list_checkpoint_ids()
    with pytest.raises(CheckpointCorrupt, match=f"{orphan}: no manifest"):
        tier.read_manifest(orphan)
    point = Catalog(tier).find_resume_point()
    assert point.manifest.checkpoint_id == committed.checkpoint_id
    assert point.next_seq == 3
    assert point.skipped[0][0] == orphan


def test_tier_pin_is_absent_until_written(tier):
    assert tier.read_pin() is None
    tier.write_pin({"checkpoint_id": "step-00000010-aaaaaaaa", "step": 10})
    assert tier.read_pin() == {"checkpoint_id": "step-00000010-aaaaaaaa", "step": 10}


def test_directory_tier_pin_stays_at_pins_resume_json(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit(tier, tmp_path, 1, 10)
    Catalog(tier).pin(checkpoint_id_for(10, "a" * 32))
    assert (tmp_path / "shared" / "pins" / "resume.json").exists()


@pytest.mark.parametrize("implementation", [DirectoryTier, S3Tier, CommitLog, S3CommitLog])
def test_tiers_and_commit_logs_offer_the_protocols_methods_with_the_same_signatures(implementation):
    protocol = TierCommitLog if "CommitLog" in implementation.__name__ else Tier
    methods = [name for name, member in vars(protocol).items() if inspect.isfunction(member) and name[0] != "_"]
    assert methods
    for name in methods:
        assert inspect.signature(getattr(implementation, name)) == inspect.signature(getattr(protocol, name)), name


# --- S3 specifics ------------------------------------------------------------------------------
def test_s3_url_must_name_a_bucket():
    assert parse_s3_url("s3://bucket/runs/r1/") == ("bucket", "runs/r1")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("bucket/runs", "s3:///runs", "/shared/dir"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            parse_s3_url(bad)


def test_s3_settings_refuse_parts_smaller_than_s3_allows():
    with pytest.raises(ValueError, match="part_size_bytes must be at least 5242880.*got 1024"):
        S3Settings(part_size_bytes=1024)
    with pytest.raises(ValueError, match="retry_mode"):
        S3Settings(retry_mode="legacy")


def test_s3_put_file_multipart_above_the_threshold(bucket, moto_url, fault_proxy, tmp_path):
    tier = _s3_tier(bucket, fault_proxy.url, multipart_threshold_bytes=5 * MiB, part_size_bytes=5 * MiB)
    payload = os.urandom(12 * MiB)
    entry = tier.put_file("ckpt", "state/optim.pt", _file(tmp_path, "optim", payload))
    assert (entry.size, entry.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    parts = [t for m, t, _ in fault_proxy.requests if m == "PUT" and "partNumber=" in t]
    assert len(parts) == 3
    head = _raw_client(moto_url).head_object(Bucket=bucket, Key="runs/r1/checkpoints/ckpt/state/optim.pt")
    assert head["ContentLength"] == len(payload) and head["ETag"].endswith('-3"')  # a multipart object
    assert tier.read_range("ckpt", "state/optim.pt", 5 * MiB - 10, 20) == payload[5 * MiB - 10:5 * MiB + 10]
    tier.fetch_file("ckpt", "state/optim.pt", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == payload


def test_s3_verify_detects_an_overwritten_truncated_or_missing_object(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    manifest = _save(tier, tmp_path, 10, "a" * 32, payload=b"0123456789")
    key = f"runs/r1/checkpoints/{manifest.checkpoint_id}/state/model.pt"
    raw = _raw_client(moto_url)
    raw.put_object(Bucket=bucket, Key=key, Body=b"0123456780")
    with pytest.raises(CheckpointCorrupt, match="state/model.pt fails its sha256 check"):
        tier.verify(manifest)
    raw.put_object(Bucket=bucket, Key=key, Body=b"01234")
    with pytest.raises(CheckpointCorrupt, match="has 5 bytes, manifest says 10"):
        tier.verify(manifest)
    raw.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(CheckpointCorrupt, match="state/model.pt is missing"):
        tier.verify(manifest)


@pytest.mark.parametrize("text", [b"{not json", b"[]", b'{"format_version": 1}'])
def test_s3_read_manifest_unreadable_is_corrupt_naming_the_checkpoint(bucket, moto_url, text):
    tier = _s3_tier(bucket, moto_url)
    _raw_client(moto_url).put_object(Bucket=bucket, Key="runs/r1/checkpoints/ckpt-x/manifest.json", Body=text)
    with pytest.raises(CheckpointCorrupt, match="ckpt-x: unreadable manifest"):
        tier.read_manifest("ckpt-x")


def test_s3_read_manifest_naming_another_checkpoint_is_corrupt(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    manifest = _save(tier, tmp_path, 10, "a" * 32)
    raw = _raw_client(moto_url)
    raw.copy_object(Bucket=bucket, Key="runs/r1/checkpoints/elsewhere/manifest.json",
                    CopySource={"Bucket": bucket, "Key": f"runs/r1/checkpoints/{manifest.checkpoint_id}/manifest.json"})
    with pytest.raises(CheckpointCorrupt, match=f"elsewhere: manifest names {manifest.checkpoint_id}"):
        tier.read_manifest("elsewhere")


def test_catalog_on_s3_resumes_from_the_newest_valid_skipping_an_overwritten_one(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    _commit(tier, tmp_path, 1, 10)
    good = _commit(tier, tmp_path, 2, 20)
    bad = _commit(tier, tmp_path, 3, 30)
    _raw_client(moto_url).put_object(Bucket=bucket, Key=f"runs/r1/checkpoints/{bad.checkpoint_id}/state/model.pt",
                                     Body=b"weights at 3X")
    point = Catalog(tier).find_resume_point()
    assert point.manifest.checkpoint_id == good.checkpoint_id
    assert point.next_seq == 4
    assert point.skipped == [(bad.checkpoint_id, f"{bad.checkpoint_id}: state/model.pt fails its sha256 check")]


def test_open_tier_picks_s3_for_s3_urls_with_the_endpoint_from_the_environment(bucket, moto_url, monkeypatch,
                                                                              tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    tier = open_tier(f"s3://{bucket}/runs/r1")
    assert isinstance(tier, S3Tier) and tier.url == f"s3://{bucket}/runs/r1"
    _save(tier, tmp_path, 10, "a" * 32)
    listed = _raw_client(moto_url).list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"] for o in listed} == {"runs/r1/checkpoints/step-00000010-aaaaaaaa/state/model.pt",
                                          "runs/r1/checkpoints/step-00000010-aaaaaaaa/manifest.json"}
    assert isinstance(open_tier(str(tmp_path / "shared")), DirectoryTier)
    assert open_tier(tmp_path / "shared").url == str(tmp_path / "shared")
    with pytest.raises(ValueError, match="applies to s3:// locations only"):
        open_tier(str(tmp_path / "shared"), endpoint_url=moto_url)


# --- the commit log: conditional writes --------------------------------------------------------------
def test_moto_refuses_a_second_put_if_none_match(bucket, moto_url):
    """The premise of the S3 commit log: the server enforces If-None-Match: * on PutObject."""
    raw = _raw_client(moto_url)
    raw.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        raw.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert raw.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_s3_commit_log_publish_then_read(bucket, moto_url):
    log_ = _s3_tier(bucket, moto_url).commit_log
    assert (log_.sequence_numbers(), log_.head()) == ([], 0)
    record = CommitRecord(seq=1, checkpoint_id="step-00000010-aaaaaaaa", step=10, group_token="a" * 32)
    log_.publish(record)
    assert log_.read(1) == record
    assert log_.head() == 1
    assert _raw_client(moto_url).head_object(Bucket=bucket, Key="runs/r1/commits/0000000001")


def test_s3_commit_log_same_seq_twice_is_fenced_naming_the_winner(bucket, moto_url):
    first, second = _s3_tier(bucket, moto_url).commit_log, _s3_tier(bucket, moto_url).commit_log
    first.publish(CommitRecord(seq=1, checkpoint_id="step-00000010-aaaaaaaa", step=10, group_token="a" * 32))
    with pytest.raises(FencingError, match=r"commit 1 was already published .*checkpoint step-00000010-aaaaaaaa, "
                                           r"group a{32}.*token b{32}\) is stale"):
        second.publish(CommitRecord(seq=1, checkpoint_id="step-00000010-bbbbbbbb", step=10, group_token="b" * 32))
    assert first.read(1).group_token == "a" * 32


def test_s3_stale_group_that_checked_the_head_earlier_still_cannot_publish(bucket, moto_url, tmp_path):
    stale, rival = _s3_tier(bucket, moto_url), _s3_tier(bucket, moto_url)
    _commit(stale, tmp_path, 1, 10)
    stale_point = Catalog(stale).find_resume_point()  # the stale group checks: it may publish 2
    rival_point = Catalog(rival).find_resume_point()  # so does the rival, and it publishes first
    _commit(rival, tmp_path, rival_point.next_seq, 20, token="r" * 32, parent=rival_point.manifest.checkpoint_id)
    late = _save(stale, tmp_path, 20, "s" * 32)
    with pytest.raises(FencingError, match="group r{32}"):
        stale.commit_log.publish(CommitRecord(seq=stale_point.next_seq, checkpoint_id=late.checkpoint_id, step=20,
                                              group_token="s" * 32))
    assert Catalog(stale).find_resume_point().manifest.checkpoint_id == checkpoint_id_for(20, "r" * 32)


@pytest.mark.full
def test_s3_commit_log_races_have_one_winner_and_every_loser_is_fenced(bucket, moto_url):
    """Eight publishers at each of three sequence numbers. Against moto this checks the client's
    side (every loser gets FencingError naming the one winner); moto checks If-None-Match and then
    writes without a lock, so the server's atomicity is shown only against S3 itself
    (tests/integration/test_s3_aws_conformance.py)."""
    logs = [_s3_tier(bucket, moto_url).commit_log for _ in range(8)]
    for seq in (1, 2, 3):
        barrier, winners, fenced = threading.Barrier(len(logs)), [], []

        def publish(group: int) -> None:
            record = CommitRecord(seq=seq, checkpoint_id=f"step-{seq:08d}-{group:08d}", step=seq,
                                  group_token=f"{group:032d}")
            barrier.wait()
            try:
                logs[group].publish(record)
                winners.append(group)
            except FencingError as e:
                fenced.append(str(e))
        threads = [threading.Thread(target=publish, args=(group,)) for group in range(len(logs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and len(fenced) == len(logs) - 1, (winners, fenced)
        assert all(f"group {winners[0]:032d}" in message for message in fenced)
        assert logs[0].read(seq).group_token == f"{winners[0]:032d}"


# --- faults through the proxy ------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [
    internal_error(method="PUT", target="/state/model.pt$"),
    slow_down(method="PUT", target="/state/model.pt$", times=2),
    Fault(kind=RESET_BEFORE_RESPONSE, method="PUT", target="/state/model.pt$"),
    Fault(kind=RESET_MID_REQUEST, method="PUT", target="/state/model.pt$"),
], ids=["500", "503-slowdown-twice", "reset-before-response", "reset-mid-request"])
def test_s3_put_file_is_retried_by_botocore_and_says_so(bucket, fault_proxy, tmp_path, caplog, fault):
    tier = _s3_tier(bucket, fault_proxy.url)
    fault_proxy.inject(fault)
    with caplog.at_level(logging.WARNING):
        manifest = _save(tier, tmp_path, 10, "a" * 32, payload=b"x" * 200_000)
    tier.verify(manifest)
    assert fault.fired == fault.times
    retries = [r.getMessage() for r in caplog.records if "botocore retrying" in r.getMessage()]
    assert len(retries) == fault.times and all("S3 PutObject" in m for m in retries), retries
    assert "attempt 2 of 5" in retries[0]


def test_s3_multipart_part_failures_are_retried(bucket, fault_proxy, tmp_path, caplog):
    tier = _s3_tier(bucket, fault_proxy.url, multipart_threshold_bytes=5 * MiB, part_size_bytes=5 * MiB)
    fault_proxy.inject(slow_down(method="PUT", target="partNumber=2"),
                       Fault(kind=RESET_BEFORE_RESPONSE, method="PUT", target="partNumber=3"))
    payload = os.urandom(11 * MiB)
    with caplog.at_level(logging.WARNING):
        entry = tier.put_file("ckpt", "big.bin", _file(tmp_path, "big", payload))
    assert entry.sha256 == hashlib.sha256(payload).hexdigest()
    assert tier.read_range("ckpt", "big.bin", 0, len(payload)) == payload
    messages = [r.getMessage() for r in caplog.records]
    assert sum("S3 UploadPart: botocore retrying" in m for m in messages) == 2


def test_s3_multipart_completion_whose_response_was_lost_is_retried(bucket, fault_proxy, moto_url, tmp_path):
    """botocore resends CompleteMultipartUpload after a reset; the server must take it as done.
    (moto treats a repeated completion of the same upload as idempotent.)"""
    tier = _s3_tier(bucket, fault_proxy.url, multipart_threshold_bytes=5 * MiB, part_size_bytes=5 * MiB)
    fault = Fault(kind=RESET_AFTER_UPSTREAM, method="POST", target=r"\?uploadId=")
    fault_proxy.inject(fault)
    payload = os.urandom(6 * MiB)
    entry = tier.put_file("ckpt", "big.bin", _file(tmp_path, "big", payload))
    assert fault.fired == 1
    assert entry.sha256 == hashlib.sha256(payload).hexdigest()
    assert _raw_client(moto_url).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert tier.read_range("ckpt", "big.bin", 0, len(payload)) == payload


def test_s3_list_checkpoint_ids_counts_folders_not_stray_objects(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    _raw_client(moto_url).put_object(Bucket=bucket, Key="runs/r1/checkpoints/README", Body=b"not a checkpoint")
    _save(tier, tmp_path, 10, "a" * 32)
    assert tier.list_checkpoint_ids() == ["step-00000010-aaaaaaaa"]


@pytest.mark.parametrize("read", ["manifest", "range", "verify"])
def test_s3_body_cut_off_mid_stream_is_retried_by_tensile(bucket, fault_proxy, moto_url, tmp_path, caplog, read):
    tier = _s3_tier(bucket, fault_proxy.url)
    manifest = _save(tier, tmp_path, 10, "a" * 32, payload=os.urandom(100_000))
    target = "manifest.json$" if read == "manifest" else "state/model.pt$"
    fault = Fault(kind=RESET_MID_BODY, method="GET", target=target)
    fault_proxy.inject(fault)
    with caplog.at_level(logging.WARNING):
        if read == "manifest":
            assert tier.read_manifest(manifest.checkpoint_id) == manifest
        elif read == "range":
            assert len(tier.read_range(manifest.checkpoint_id, "state/model.pt", 10, 90_000)) == 90_000
        else:
            tier.verify(manifest)
    assert fault.fired == 1
    retries = [r.getMessage() for r in caplog.records if r.name == "tensile.s3.retry"]
    assert len(retries) == 1 and "failed on attempt 1 of 4" in retries[0] and "GetObject" in retries[0], retries


def test_s3_stall_longer_than_the_read_timeout_is_retried(bucket, fault_proxy, tmp_path, caplog):
    tier = _s3_tier(bucket, fault_proxy.url, read_timeout_s=0.5)
    manifest = _save(tier, tmp_path, 10, "a" * 32)
    fault = Fault(kind=STALL, method="GET", target="manifest.json$", stall_s=1.5)
    fault_proxy.inject(fault)
    with caplog.at_level(logging.WARNING):
        assert tier.read_manifest(manifest.checkpoint_id) == manifest
    assert fault.fired == 1
    assert any("botocore retrying" in m and "ReadTimeoutError" in m for m in caplog.messages), caplog.messages


def test_s3_retries_give_up_with_the_servers_error(bucket, fault_proxy, tmp_path):
    tier = _s3_tier(bucket, fault_proxy.url, client_attempts=2)
    fault_proxy.inject(internal_error(method="PUT", target="/state/model.pt$", times=10))
    with pytest.raises(ClientError, match="InternalError"):
        _save(tier, tmp_path, 10, "a" * 32)
    assert sum(kind == HTTP_ERROR for _, _, kind in fault_proxy.requests) == 2


def test_s3_publish_whose_response_was_lost_finds_its_own_record(bucket, fault_proxy, caplog):
    """The conditional PUT landed but the reply was reset: the retry meets a 412 on our own record."""
    log_ = _s3_tier(bucket, fault_proxy.url).commit_log
    fault = Fault(kind=RESET_AFTER_UPSTREAM, method="PUT", target="/commits/0000000001$")
    fault_proxy.inject(fault)
    record = CommitRecord(seq=1, checkpoint_id="step-00000010-aaaaaaaa", step=10, group_token="a" * 32)
    with caplog.at_level(logging.INFO):
        log_.publish(record)
    assert fault.fired == 1
    assert log_.read(1) == record
    assert any("found our own record" in m for m in caplog.messages)
    rival = CommitRecord(seq=1, checkpoint_id="step-00000010-bbbbbbbb", step=10, group_token="b" * 32)
    with pytest.raises(FencingError, match="group a{32}"):
        log_.publish(rival)


def test_s3_publish_retries_a_conditional_write_conflict(bucket, fault_proxy, caplog):
    """409 ConditionalRequestConflict: a rival's write was in flight; retrying settles it."""
    log_ = _s3_tier(bucket, fault_proxy.url).commit_log
    fault_proxy.inject(Fault(kind=HTTP_ERROR, status=409, code="ConditionalRequestConflict",
                             message="A conflicting conditional operation is in progress", method="PUT",
                             target="/commits/"))
    record = CommitRecord(seq=1, checkpoint_id="step-00000010-aaaaaaaa", step=10, group_token="a" * 32)
    with caplog.at_level(logging.WARNING):
        log_.publish(record)
    assert log_.read(1) == record
    assert any("If-None-Match" in m and "ConditionalRequestConflict" in m for m in caplog.messages)


def test_s3_publish_still_conflicting_after_retries_is_fenced(bucket, fault_proxy):
    log_ = _s3_tier(bucket, fault_proxy.url).commit_log
    fault_proxy.inject(Fault(kind=HTTP_ERROR, status=409, code="ConditionalRequestConflict", method="PUT",
                             target="/commits/", times=10))
    with pytest.raises(FencingError, match="commit 1 was already published .*conflicting write after 4 tries"):
        log_.publish(CommitRecord(seq=1, checkpoint_id="c", step=10, group_token="a" * 32))


_KILLED_UPLOADER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tensile.s3.objects import S3Settings
    from tensile.checkpoint.s3_tier import S3Tier
    url, endpoint, source = sys.argv[1:]
    tier = S3Tier(url, endpoint_url=endpoint, settings=S3Settings(
        multipart_threshold_bytes=5 << 20, part_size_bytes=5 << 20, max_concurrency=1))
    tier.put_file("step-00000020-bbbbbbbb", "state/model.pt", Path(source))
    print("upload finished: the test should have killed it", flush=True)
""")


def test_s3_upload_killed_mid_way_leaves_nothing_visible_and_no_resume_point(bucket, moto_url, fault_proxy, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    committed = _commit(tier, tmp_path, 1, 10)
    # The second part stalls at the proxy; the uploader is killed while it waits.
    stall = Fault(kind=STALL, method="PUT", target="partNumber=2", stall_s=30)
    fault_proxy.inject(stall)
    source = _file(tmp_path, "big", os.urandom(12 * MiB))
    uploader = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOADER, tier.url, fault_proxy.url, str(source)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):  # until the second part stalls, or the uploader fails on its own
            if stall.first_fired.wait(timeout=0.1) or uploader.poll() is not None:
                break
        assert stall.first_fired.is_set(), "the uploader never reached its second part"
    finally:
        uploader.send_signal(signal.SIGKILL)
        output = uploader.communicate(timeout=30)[0].decode()
    assert uploader.returncode == -signal.SIGKILL, output
    killed = "step-00000020-bbbbbbbb"
    raw = _raw_client(moto_url)
    with pytest.raises(ClientError, match="404"):
        raw.head_object(Bucket=bucket, Key=f"runs/r1/checkpoints/{killed}/state/model.pt")
    uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"runs/r1/checkpoints/{killed}/state/model.pt"]
    assert killed not in tier.list_checkpoint_ids()  # not even a prefix: nothing is half-visible
    with pytest.raises(CheckpointCorrupt, match="no manifest"):
        tier.read_manifest(killed)
    assert Catalog(tier).find_resume_point().manifest.checkpoint_id == committed.checkpoint_id
    tier.delete_checkpoint(killed)  # a cleanup by id also aborts the dangling upload
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_delete_without_permission_to_list_uploads_still_deletes_the_objects(bucket, fault_proxy, tmp_path,
                                                                                 caplog):
    tier = _s3_tier(bucket, fault_proxy.url)
    manifest = _save(tier, tmp_path, 10, "a" * 32)
    fault_proxy.inject(Fault(kind=HTTP_ERROR, status=403, code="AccessDenied", message="Access Denied",
                             method="GET", target=r"\?uploads"))
    with caplog.at_level(logging.WARNING):
        tier.delete_checkpoint(manifest.checkpoint_id)
    assert tier.list_checkpoint_ids() == []
    assert any("cannot list unfinished uploads" in m for m in caplog.messages)


# --- rollback pins on S3 -----------------------------------------------------------------------------
def test_catalog_pin_on_s3_is_the_resume_point_and_prune_keeps_its_lineage(bucket, moto_url, tmp_path):
    tier = _s3_tier(bucket, moto_url)
    line = [_commit(tier, tmp_path, 1, 10)]
    for seq in range(2, 6):
        line.append(_commit(tier, tmp_path, seq, seq * 10, parent=line[-1].checkpoint_id))
    catalog = Catalog(tier)
    catalog.pin(line[2].checkpoint_id)  # step 30, whose lineage is steps 10 and 20
    assert _raw_client(moto_url).head_object(Bucket=bucket, Key="runs/r1/pins/resume.json")
    assert catalog.pinned() == line[2].checkpoint_id
    point = catalog.find_resume_point()
    assert (point.manifest.checkpoint_id, point.pinned, point.next_seq) == (line[2].checkpoint_id,
                                                                            line[2].checkpoint_id, 6)
    deleted = catalog.prune(keep_last=1)
    assert deleted == [line[3].checkpoint_id]  # step 40: neither newest nor on the pin's lineage
    assert set(tier.list_checkpoint_ids()) == {m.checkpoint_id for m in (*line[:3], line[4])}
    # Training after the rollback publishes on the pin's branch: that becomes the resume point.
    branch = _commit(tier, tmp_path, 6, 40, token="c" * 32, parent=line[2].checkpoint_id,
                     branch=line[2].checkpoint_id)
    assert catalog.find_resume_point().manifest.checkpoint_id == branch.checkpoint_id


# --- the fault proxy's script ---------------------------------------------------------------------------
def test_fault_script_breaks_the_nth_matches_or_every_kth():
    window = Fault(kind=STALL, method="PUT", target="partNumber=", nth=2, times=2)
    assert [window.count_and_decide() for _ in range(5)] == [False, True, True, False, False]
    rate = Fault(kind=RESET_MID_BODY, every=3)
    assert [rate.count_and_decide() for _ in range(7)] == [False, False, True, False, False, True, False]
    assert window.matches("PUT", "/b/k?uploadId=x&partNumber=2") and not window.matches("GET", "/b/k?partNumber=2")
    with pytest.raises(ValueError, match="kind must be one of"):
        Fault(kind="explode")


# --- Tensile's retry wrapper ---------------------------------------------------------------------------
def test_call_with_retries_stops_at_a_permanent_error_and_gives_up_after_its_attempts(caplog):
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionResetError("reset by peer")
    with pytest.raises(ConnectionResetError), caplog.at_level(logging.WARNING):
        call_with_retries("S3 GetObject k", flaky, policy=FAST_RETRIES, is_transient=lambda e: True)
    assert len(calls) == 4
    assert [m.split(" (")[0] for m in caplog.messages] == [
        f"S3 GetObject k failed on attempt {n} of 4" for n in (1, 2, 3)]
    calls.clear()
    with pytest.raises(KeyError):
        call_with_retries("op", lambda: calls.append(1) or {}["x"], policy=FAST_RETRIES, is_transient=lambda e: False)
    assert len(calls) == 1


def test_retry_policy_delays_are_full_jitter_under_a_doubling_cap():
    policy = RetryPolicy(attempts=10, base_delay_s=1.0, max_delay_s=5.0)
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay_s(failures) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > cap / 2  # spread over the range, not pinned at 0
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        RetryPolicy(attempts=0)


# --- Epoch fencing, on both tiers: the newest group wins, and a stale group's late commit is the
# one refused, never the live group (issue 13, part 2) -----------------------------------------


def _record(manifest, seq: int, token: str, epoch: int) -> CommitRecord:
    return CommitRecord(seq=seq, checkpoint_id=manifest.checkpoint_id, step=manifest.step, group_token=token,
                        epoch=epoch)


def test_epochs_are_claimed_in_order_and_each_exactly_once(tier):
    catalog = Catalog(tier)
    first, second = catalog.claim_epoch("a" * 32), catalog.claim_epoch("b" * 32)
    assert (first.epoch, second.epoch) == (1, 2)
    assert not tier.commit_log.claim_epoch(EpochClaim(epoch=2, head_seen=0, group_token="c" * 32))
    assert tier.commit_log.claim_epoch(second), "a retried claim that meets our own is ours"
    assert [c.epoch for c in tier.commit_log.epoch_claims()] == [1, 2]


def test_a_stale_groups_late_commit_is_ignored_and_the_live_group_publishes_past_it(tier, tmp_path):
    catalog = Catalog(tier)
    stale = catalog.claim_epoch("s" * 32)
    first = _save(tier, tmp_path, 3, "s" * 32)
    assert catalog.publish(_record(first, 1, "s" * 32, stale.epoch)) == 1
    live = catalog.claim_epoch("l" * 32)  # the group re-formed without the stale one
    assert live.head_seen == 1
    # The stale group's background publish lands late, at the seq the live group expects next.
    late = _save(tier, tmp_path, 6, "s" * 32)
    tier.commit_log.publish(_record(late, 2, "s" * 32, stale.epoch))
    point = catalog.find_resume_point()
    assert point.manifest.checkpoint_id == first.checkpoint_id
    assert any(late.checkpoint_id == what and "stale group (epoch 1)" in why for what, why in point.skipped)
    # The live group is not fenced by it: it publishes past it.
    mine = _save(tier, tmp_path, 6, "l" * 32)
    assert catalog.publish(_record(mine, live.head_seen + 1, "l" * 32, live.epoch)) == 3
    assert [r.checkpoint_id for r in catalog.committed()] == [first.checkpoint_id, mine.checkpoint_id]
    # And the stale group's next publish is refused, naming the newer group.
    with pytest.raises(FencingError, match="newer worker group \\(epoch 2"):
        catalog.publish(_record(_save(tier, tmp_path, 9, "s" * 32), 4, "s" * 32, stale.epoch))


def test_a_commit_that_lands_after_a_newer_epoch_began_fences_its_own_group(tier, tmp_path):
    # The stale group checked for newer epochs, then the newer one claimed, then its record
    # landed: it must learn it lost (its record is ignored by everyone) rather than carry on.
    catalog = Catalog(tier)
    stale = catalog.claim_epoch("s" * 32)
    manifest = _save(tier, tmp_path, 3, "s" * 32)
    record = _record(manifest, 1, "s" * 32, stale.epoch)
    tier.commit_log.claim_epoch(EpochClaim(epoch=2, head_seen=0, group_token="l" * 32))
    original = tier.commit_log.epoch_claims
    calls = []

    def claims_before_the_newer_group(newer_than: int = 0):  # the pre-publish check ran before epoch 2
        calls.append(1)
        claims = original(newer_than=newer_than)
        return [c for c in claims if c.epoch == 1] if len(calls) == 1 else claims

    tier.commit_log.epoch_claims = claims_before_the_newer_group
    with pytest.raises(FencingError, match="stale group \\(epoch 1\\) after epoch 2 began"):
        catalog.publish(record)
    tier.commit_log.epoch_claims = original
    assert Catalog(tier).find_resume_point().manifest is None


def test_a_log_written_before_epochs_reads_as_epoch_0_and_stands(tier, tmp_path):
    manifest = _save(tier, tmp_path, 3, "o" * 32)
    old = CommitRecord(seq=1, checkpoint_id=manifest.checkpoint_id, step=3, group_token="o" * 32)
    tier.commit_log.publish(old)
    assert tier.commit_log.read(1).epoch == 0
    claim = Catalog(tier).claim_epoch("n" * 32)
    assert claim.head_seen == 1
    assert Catalog(tier).find_resume_point().manifest.checkpoint_id == manifest.checkpoint_id
    assert checkpoint_id_for(3, "o" * 32) == manifest.checkpoint_id
