"""A dataset on S3 (moto on loopback) reads through boto3, prefetched, as its local copy does."""

from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from tensile.data import (DatasetIntegrityError, DatasetNotFoundError, GlobalSampler, PrefetchingReader,
                          StepRequest, TokenDataset, TokenShardWriter)


def _upload(directory: Path, bucket: str, prefix: str, endpoint: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(directory.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def datasets(tmp_path, bucket, moto_url, monkeypatch):
    """(local dataset, its copy on S3, samples, masks): 40 samples with masks, in shards of 8."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    rng = np.random.default_rng(7)
    samples, masks = rng.integers(0, 70_000, size=(40, 17)), rng.random((40, 17)) < 0.5
    with TokenShardWriter(str(tmp_path / "ds"), seq_len=16, vocab_size=70_000, samples_per_shard=8,
                          loss_mask=True) as writer:
        for sample, mask in zip(samples, masks):
            writer.write(sample, mask)
    url = _upload(tmp_path / "ds", bucket, "data/ds", moto_url)
    return TokenDataset(str(tmp_path / "ds")), TokenDataset(url), samples, masks


def test_an_s3_dataset_with_prefetch_gives_the_batches_of_its_local_copy(datasets):
    local, remote, samples, _ = datasets
    assert remote.data_version == local.data_version and remote.has_loss_mask
    sampler = GlobalSampler(40, 12, seed=3)
    requests = []
    for step in range(8):  # past an epoch boundary
        ids = sampler.sample_ids_for_step(step)
        requests.append(StepRequest(step, ids, [ids[:5], ids[5:10]]))  # this rank's share: 10 of 12
    reader = PrefetchingReader(remote)
    try:
        for step, request in enumerate(requests):
            got = reader.read(request)
            if step + 1 < len(requests):
                reader.prefetch(requests[step + 1])
            assert got.target_count == local.count_targets(request.sample_ids)
            for ids, batch in zip(request.micro_batches, got.micro_batches):
                assert torch.equal(batch.tokens, local.read(ids)) and torch.equal(batch.tokens, torch.from_numpy(samples[ids]))
                assert torch.equal(batch.loss_mask, local.read_loss_mask(ids))
    finally:
        reader.close()
    remote.verify()


def test_s3_reads_coalesce_adjacent_samples_into_one_ranged_get(datasets, monkeypatch):
    _, remote, samples, _ = datasets
    ranges = []
    objects = remote.store.objects
    real_get = objects.get
    monkeypatch.setattr(objects, "get", lambda key, byte_range=None: ranges.append((key, byte_range)) or real_get(key, byte_range))

    ids = [8, 9, 10, 11, 12, 13, 14, 15, 16, 3]  # all of shard 1, the first of shard 2, one of shard 0
    assert torch.equal(remote.read(ids), torch.from_numpy(samples[ids]))
    assert sorted(key.rsplit("/", 1)[1] for key, _ in ranges) == ["shard-00000.bin", "shard-00001.bin", "shard-00002.bin"]
    assert ("data/ds/shard-00001.bin", f"bytes=0-{8 * 17 * 4 - 1}") in ranges


def test_an_s3_dataset_that_is_not_there_says_so(bucket, moto_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    with pytest.raises(DatasetNotFoundError, match=f"s3://{bucket}/nothing"):
        TokenDataset(f"s3://{bucket}/nothing")


def test_a_truncated_s3_shard_is_an_integrity_error(datasets, bucket, moto_url):
    _, remote, _, _ = datasets
    client = boto3.client("s3", endpoint_url=moto_url)
    body = client.get_object(Bucket=bucket, Key="data/ds/shard-00004.bin")["Body"].read()
    client.put_object(Bucket=bucket, Key="data/ds/shard-00004.bin", Body=body[:-10])
    with pytest.raises(DatasetIntegrityError, match="shard-00004.bin"):
        remote.read([39])


def test_a_failed_background_read_raises_on_the_training_thread(datasets, monkeypatch):
    _, remote, _, _ = datasets
    reader = PrefetchingReader(remote)
    request = StepRequest(0, [1, 2], [[1, 2]])

    def broken(*args, **kwargs):
        raise ConnectionError("link down")
    monkeypatch.setattr(remote.store, "read_rows", broken)
    reader.prefetch(request)
    with pytest.raises(ConnectionError, match="link down"):
        reader.read(request)
    reader.close()
