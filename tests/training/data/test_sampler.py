"""The keyed Feistel permutation: a bijection, keyed by seed and epoch, in memory flat in n;
and the randperm order that checkpoints written before it resume with."""

import gc
import tracemalloc

import numpy as np
import psutil
import pytest
import torch

from tensile.data import FeistelPermutation, GlobalSampler, epoch_permutation_seed


@pytest.mark.parametrize("num_samples", [1, 2, 3, 4, 5, 7, 16, 17, 97, 1000, 4096, 4099, 65_521, 100_003])
def test_feistel_permutation_is_a_bijection_of_the_range(num_samples):
    order = FeistelPermutation(num_samples, seed=3, epoch=2)(np.arange(num_samples))
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(num_samples))


def test_feistel_permutation_is_deterministic_and_keyed_by_seed_and_epoch():
    positions = np.arange(10_007)
    order = FeistelPermutation(10_007, seed=1, epoch=0)(positions)

    assert np.array_equal(order, FeistelPermutation(10_007, seed=1, epoch=0)(positions))
    # Any subset of positions maps as in the whole: nothing depends on what else was asked.
    assert np.array_equal(FeistelPermutation(10_007, seed=1, epoch=0)(positions[5000:5100]), order[5000:5100])
    for other in (FeistelPermutation(10_007, seed=1, epoch=1), FeistelPermutation(10_007, seed=2, epoch=0)):
        assert np.mean(other(positions) == order) < 0.01
    # Pinned: a change here reorders every new run's data, so it must be deliberate.
    assert FeistelPermutation(10, seed=0, epoch=0)(np.arange(10)).tolist() == PINNED_ORDER


PINNED_ORDER = [3, 9, 5, 4, 1, 8, 7, 0, 2, 6]


def test_feistel_permutation_shuffles_rather_than_shifts():
    order = FeistelPermutation(100_000, seed=0, epoch=0)(np.arange(100_000))
    # Neighbours land far apart and no long run keeps its order.
    assert np.median(np.abs(np.diff(order))) > 10_000
    assert abs(np.corrcoef(np.arange(100_000), order)[0, 1]) < 0.02


def test_feistel_permutation_refuses_positions_outside_the_range():
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        FeistelPermutation(10, seed=0, epoch=0)(np.array([3, 10]))


def _step_memory(num_samples: int) -> tuple[int, int]:
    """(peak bytes Python and numpy allocate, RSS growth) for a sampler over num_samples to give a
    few steps, epoch boundary included. tracemalloc does not see torch's allocator, RSS does."""
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    tracemalloc.start()
    try:
        sampler = GlobalSampler(num_samples, 256, seed=0)
        steps_per_epoch = num_samples // 256
        for step in (0, 1, steps_per_epoch, steps_per_epoch + 1):
            assert len(sampler.sample_ids_for_step(step)) == 256
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, psutil.Process().memory_info().rss - rss_before


def test_global_sampler_memory_stays_flat_from_10k_to_100m_samples():
    small_peak, _ = _step_memory(10_000)
    large_peak, large_rss = _step_memory(100_000_000)

    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)
    # randperm held 2 × 800 MB here; the Feistel order needs nothing of the dataset's size.
    assert large_rss < 64 << 20, large_rss


def test_global_sampler_new_runs_use_the_feistel_order():
    sampler = GlobalSampler(100, 10, seed=4)
    ids = [sample_id for step in range(10) for sample_id in sampler.sample_ids_for_step(step)]
    assert ids == FeistelPermutation(100, seed=4, epoch=0)(np.arange(100)).tolist()
    assert sampler.sample_ids_for_step(10) == FeistelPermutation(100, seed=4, epoch=1)(np.arange(10)).tolist()


def test_an_old_sampler_state_resumes_the_old_randperm_order():
    # What a version-1 checkpoint holds (tests/fixtures/format-v2 has such states).
    old_state = {"consumed_samples": 40, "seed": 2, "num_samples": 50, "global_batch_size": 5}
    sampler = GlobalSampler(50, 5, seed=2)
    sampler.load_state_dict(old_state)

    assert sampler.permutation_kind == "randperm"
    generator = torch.Generator().manual_seed(epoch_permutation_seed(2, 0))
    old_order = torch.randperm(50, generator=generator).tolist()
    assert sampler.sample_ids_for_step(sampler.next_step) == old_order[40:45]
    # Saved again, it says which order it is, and keeps it through another resume.
    state = sampler.state_dict()
    assert state["permutation"] == "randperm" and state["version"] == 2
    again = GlobalSampler(50, 5, seed=2)
    again.load_state_dict(state)
    assert again.sample_ids_for_step(9) == old_order[45:50]


def test_a_feistel_sampler_state_resumes_the_feistel_order():
    sampler = GlobalSampler(50, 5, seed=2)
    sampler.advance(3)
    resumed = GlobalSampler(50, 5, seed=2, permutation="randperm")
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.permutation_kind == "feistel"
    assert resumed.sample_ids_for_step(4) == sampler.sample_ids_for_step(4)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("version", 3, "version 3"), ("permutation", "sorted", "permutation 'sorted'")])
def test_global_sampler_refuses_a_state_it_cannot_read(field, value, message):
    state = GlobalSampler(50, 5, seed=2).state_dict() | {field: value}
    with pytest.raises(ValueError, match=message):
        GlobalSampler(50, 5, seed=2).load_state_dict(state)
