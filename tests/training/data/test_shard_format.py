"""The shard format's loss masks (version 2), version-1 datasets still read, and coalesced remote reads."""

import json
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from tensile.data import DatasetIntegrityError, TokenDataset, TokenShardWriter
from tensile.data.storage import RowRun, coalesce

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "dataset-v1"


def _masked(url, samples, masks, *, samples_per_shard=3, vocab_size=300):
    with TokenShardWriter(url, seq_len=samples.shape[1] - 1, vocab_size=vocab_size,
                          samples_per_shard=samples_per_shard, loss_mask=True) as writer:
        for sample, mask in zip(samples, masks):
            writer.write(sample, mask)
    return TokenDataset(url)


def _random(count, length, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 300, size=(count, length)), rng.random((count, length)) < 0.6


def test_a_version_1_dataset_written_by_earlier_code_reads_with_every_target_counted(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    shutil.copytree(FIXTURE / "tokens", tmp_path / "tokens")
    dataset = TokenDataset(str(tmp_path / "tokens"))

    assert dataset.format_version == 1 and not dataset.has_loss_mask
    assert dataset.data_version == expected["data_version"]
    ids = list(range(len(expected["samples"])))
    assert dataset.read(ids).tolist() == expected["samples"]
    assert torch.equal(dataset.read_loss_mask(ids), torch.ones(len(ids), dataset.seq_len))
    assert dataset.count_targets([0, 6, 6]) == 3 * dataset.seq_len
    dataset.verify()


def test_a_dataset_without_masks_is_still_written_as_version_1_with_the_same_data_version(tmp_path):
    # Checkpoints record data_version: the format change must not change it for mask-less data.
    expected = json.loads((FIXTURE / "expected.json").read_text())
    samples = np.array(expected["samples"])
    with TokenShardWriter(str(tmp_path / "again"), seq_len=samples.shape[1] - 1, vocab_size=70_000,
                          samples_per_shard=3) as writer:
        for sample in samples:
            writer.write(sample)

    assert (tmp_path / "again" / "index.json").read_text() == (FIXTURE / "tokens" / "index.json").read_text()


def test_loss_masks_round_trip_as_target_masks(tmp_path):
    samples, masks = _random(7, 11)
    dataset = _masked(str(tmp_path / "ds"), samples, masks)

    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert index["format_version"] == 2 and index["loss_mask"] is True
    assert [shard["mask_file"] for shard in index["shards"]] == [f"shard-0000{n}.mask" for n in range(3)]
    assert (tmp_path / "ds" / "shard-00000.mask").stat().st_size == 3 * 2  # 11 bits -> 2 bytes a sample
    ids = [6, 0, 3, 3]
    assert dataset.has_loss_mask
    assert torch.equal(dataset.read(ids), torch.from_numpy(samples[ids]))
    # Sample token t + 1 is the target of position t: the mask of targets drops the first token's flag.
    assert torch.equal(dataset.read_loss_mask(ids), torch.from_numpy(masks[ids][:, 1:].astype(np.float32)))
    assert dataset.count_targets(ids) == int(masks[ids][:, 1:].sum())
    batch = dataset.read_batch(ids)
    assert torch.equal(batch.tokens, dataset.read(ids)) and torch.equal(batch.loss_mask, dataset.read_loss_mask(ids))
    dataset.verify()


def test_masks_change_the_data_version_and_a_corrupted_mask_fails_verify(tmp_path):
    samples, masks = _random(4, 9)
    first = _masked(str(tmp_path / "a"), samples, masks)
    flipped = masks.copy()
    flipped[2, 5] = not flipped[2, 5]
    assert _masked(str(tmp_path / "b"), samples, flipped).data_version != first.data_version

    mask_path = tmp_path / "a" / "shard-00000.mask"
    corrupted = bytearray(mask_path.read_bytes())
    corrupted[0] ^= 0xFF
    mask_path.write_bytes(bytes(corrupted))
    with pytest.raises(DatasetIntegrityError, match="shard-00000.mask"):
        first.verify()


@pytest.mark.parametrize(("mask", "loss_mask", "message"), [
    (None, True, "give every sample a mask"),
    (np.ones(9, dtype=bool), False, "loss_mask=True"),
    (np.ones(8, dtype=bool), True, r"one flag per token \(9\)"),
])
def test_token_shard_writer_insists_on_masks_all_or_none(tmp_path, mask, loss_mask, message):
    writer = TokenShardWriter(str(tmp_path / "ds"), seq_len=8, vocab_size=300, samples_per_shard=2,
                              loss_mask=loss_mask)
    with pytest.raises(ValueError, match=message):
        writer.write(np.zeros(9, dtype=np.int64), mask)


def test_coalesce_merges_only_adjacent_rows_of_one_file_up_to_the_request_size():
    locations = [("a", 5), ("a", 3), ("a", 4), ("b", 6), ("a", 9), ("b", 7), ("a", 4)]
    assert coalesce(locations, row_bytes=10) == [RowRun("a", 3, 3), RowRun("a", 9, 1), RowRun("b", 6, 2)]
    assert coalesce([("a", n) for n in range(5)], row_bytes=10, max_request_bytes=20) == [
        RowRun("a", 0, 2), RowRun("a", 2, 2), RowRun("a", 4, 1)]


def test_remote_reads_take_one_request_per_run_of_adjacent_samples(monkeypatch):
    url = f"memory://tensile-test-{uuid.uuid4().hex}"
    samples, masks = _random(12, 9)
    try:
        dataset = _masked(url, samples, masks, samples_per_shard=6)
        requests = []
        filesystem = dataset.store._filesystem
        real = filesystem.cat_ranges
        monkeypatch.setattr(filesystem, "cat_ranges",
                            lambda paths, starts, ends, **kw: requests.extend(paths) or real(paths, starts, ends, **kw))
        ids = [2, 3, 4, 5, 0, 7, 8, 11]
        assert torch.equal(dataset.read(ids), torch.from_numpy(samples[ids]))
        # Shard 0: rows 2..5 and row 0; shard 1: rows 1..2 and row 5.
        assert len(requests) == 4
        assert torch.equal(dataset.read_loss_mask(ids), torch.from_numpy(masks[ids][:, 1:].astype(np.float32)))
    finally:
        fsspec.filesystem("memory").rm(url, recursive=True)
