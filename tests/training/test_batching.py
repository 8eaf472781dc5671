from collections import Counter

import pytest

from tensile.batching import BatchPlan, BatchPlanError, plan_batch, plans_for_range
from tensile.data import GlobalSampler

MICRO_BATCH_SETS = [[1], [1, 2, 4, 8], [3, 5], [16]]


def _every_plan(micro_batch_sizes):
    for global_batch in range(1, 49):
        for world_size in range(1, global_batch + 1):
            yield plan_batch(global_batch, micro_batch_sizes, world_size)


# --- plan_batch: properties over every valid worker count ------------------------------------------


@pytest.mark.parametrize("micro_batch_sizes", MICRO_BATCH_SETS, ids=str)
def test_plan_batch_shares_sum_to_global_batch_and_differ_by_at_most_one(micro_batch_sizes):
    for plan in _every_plan(micro_batch_sizes):
        where = f"G={plan.global_batch_size} W={plan.world_size}"
        assert len(plan.shares) == plan.world_size, where
        assert sum(plan.shares) == plan.global_batch_size, where
        assert max(plan.shares) - min(plan.shares) <= 1, where
        assert min(plan.shares) >= 1, where


@pytest.mark.parametrize("micro_batch_sizes", MICRO_BATCH_SETS, ids=str)
def test_plan_batch_every_rank_runs_the_same_micro_steps(micro_batch_sizes):
    for plan in _every_plan(micro_batch_sizes):
        where = f"G={plan.global_batch_size} W={plan.world_size}"
        assert plan.micro_batch_size in micro_batch_sizes, where
        for rank in range(plan.world_size):
            micro_batches = plan.micro_batches(rank)
            assert len(micro_batches) == plan.accumulation_steps, where
            for positions, padding in micro_batches:
                assert len(positions) + padding == plan.micro_batch_size, where
                assert padding >= 0, where


@pytest.mark.parametrize("micro_batch_sizes", MICRO_BATCH_SETS, ids=str)
def test_plan_batch_real_positions_cover_the_global_batch_exactly_once(micro_batch_sizes):
    for plan in _every_plan(micro_batch_sizes):
        where = f"G={plan.global_batch_size} W={plan.world_size}"
        positions = [p for rank in range(plan.world_size) for chunk, _ in plan.micro_batches(rank) for p in chunk]
        assert sorted(positions) == list(range(plan.global_batch_size)), where
        padding = sum(pad for rank in range(plan.world_size) for _, pad in plan.micro_batches(rank))
        slots = plan.micro_batch_size * plan.accumulation_steps * plan.world_size
        assert padding == plan.padded_samples, where
        assert len(positions) + plan.padded_samples == slots, where


@pytest.mark.parametrize("micro_batch_sizes", MICRO_BATCH_SETS, ids=str)
def test_plan_batch_deepspeed_config_matches_the_plan(micro_batch_sizes):
    for plan in _every_plan(micro_batch_sizes):
        ds = plan.deepspeed_batch_config()
        assert ds == {
            "train_micro_batch_size_per_gpu": plan.micro_batch_size,
            "gradient_accumulation_steps": plan.accumulation_steps,
            "train_batch_size": plan.global_batch_size + plan.padded_samples,
        }, f"G={plan.global_batch_size} W={plan.world_size}"
        # DeepSpeed's own consistency rule.
        assert ds["train_batch_size"] == (ds["train_micro_batch_size_per_gpu"]
                                          * ds["gradient_accumulation_steps"] * plan.world_size)


@pytest.mark.parametrize("micro_batch_sizes", MICRO_BATCH_SETS, ids=str)
def test_plan_batch_even_split_that_an_allowed_size_divides_needs_no_padding(micro_batch_sizes):
    checked = 0
    for plan in _every_plan(micro_batch_sizes):
        global_batch, world_size = plan.global_batch_size, plan.world_size
        share = global_batch // world_size
        if global_batch % world_size or not any(share % m == 0 for m in micro_batch_sizes):
            continue
        checked += 1
        where = f"G={global_batch} W={world_size}"
        assert plan.padded_samples == 0, where
        assert plan.micro_batch_size * plan.accumulation_steps * world_size == global_batch, where
    assert checked > 0


@pytest.mark.parametrize(("global_batch", "micro_batch_sizes", "world_size", "micro", "accumulation", "padded"), [
    (12, [1, 2, 4, 8], 1, 4, 3, 0),   # exact 4 × 3 beats 8 × 2 with 4 padded
    (3, [1, 2, 4, 8], 1, 1, 3, 0),
    (9, [3, 5], 1, 3, 3, 0),
    (16, [1, 2, 4, 8], 3, 2, 3, 2),   # the demo at 3 workers: shares 6,5,5 in 2 × 3
])
def test_plan_batch_prefers_less_padding_over_fewer_steps(global_batch, micro_batch_sizes, world_size,
                                                          micro, accumulation, padded):
    plan = plan_batch(global_batch, micro_batch_sizes, world_size)
    assert (plan.micro_batch_size, plan.accumulation_steps, plan.padded_samples) == (micro, accumulation, padded)


@pytest.mark.parametrize(("global_batch", "world_size", "fix"), [
    (8, 9, "lower elastic.max_nodes or elastic.processes_per_node, or raise batch.global_batch_size"),
    (1, 2, "lower elastic.max_nodes or elastic.processes_per_node, or raise batch.global_batch_size"),
    (8, 0, "world size must be >= 1"),
    (8, -1, "world size must be >= 1"),
])
def test_plan_batch_impossible_world_size_raises_naming_the_fix(global_batch, world_size, fix):
    with pytest.raises(BatchPlanError, match=fix):
        plan_batch(global_batch, [1, 2], world_size)


def test_plan_batch_error_is_a_value_error():
    with pytest.raises(ValueError):
        plan_batch(4, [1], 5)


@pytest.mark.parametrize("micro_batch_sizes", [[], [0, 2], [-1]])
def test_plan_batch_rejects_non_positive_micro_sizes(micro_batch_sizes):
    with pytest.raises(BatchPlanError, match="micro-batch sizes must be positive"):
        plan_batch(8, micro_batch_sizes, 2)


# --- plan_batch: the choice rule ------------------------------------------------------------------


@pytest.mark.parametrize(("global_batch", "micro_batch_sizes", "world_size", "micro", "accumulation"), [
    (16, [1, 2, 4, 8], 1, 8, 2),    # no padding either way: fewest steps
    (16, [1, 2, 4, 8], 2, 8, 1),
    (16, [1, 2, 4, 8], 3, 2, 3),    # share 6: 1 and 2 pad nothing; 2 takes fewer steps
    (12, [1, 2, 4, 8], 4, 1, 3),    # share 3: only 1 pads nothing
    (12, [8, 4, 2, 1], 4, 1, 3),    # order of the list does not matter
    (10, [3, 5], 1, 5, 2),          # 5 × 2 exact; 3 × 4 pads 2
    (9, [3, 5], 1, 3, 3),           # 3 × 3 exact; 5 × 2 pads 1
    (6, [3, 5], 1, 3, 2),
    (7, [16], 3, 16, 1),            # only one size: heavy padding but one step
    (48, [1], 5, 1, 10),            # shares 10,10,10,9,9
    (20, [2, 4, 8], 2, 2, 5),       # share 10: 2 × 5 exact beats 8 × 2 with padding
])
def test_plan_batch_chooses_least_padding_then_fewest_steps(global_batch, micro_batch_sizes, world_size,
                                                             micro, accumulation):
    plan = plan_batch(global_batch, micro_batch_sizes, world_size)
    assert (plan.micro_batch_size, plan.accumulation_steps) == (micro, accumulation)


def test_plan_batch_uneven_shares_go_to_the_lowest_ranks():
    plan = plan_batch(10, [1, 2, 4, 8], 4)

    assert plan.shares == (3, 3, 2, 2)
    assert [plan.rank_span(r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(IndexError):
        plan.rank_span(4)


def test_plan_batch_describe_mentions_padding_and_uneven_shares():
    assert "shares [3, 3, 2, 2]" in plan_batch(10, [4], 4).describe()
    assert "6 padded" in plan_batch(10, [4], 4).describe()
    assert "padded" not in plan_batch(16, [4], 4).describe()


def test_plans_for_range_covers_min_to_max():
    plans = plans_for_range(16, [1, 2, 4, 8], 2, 5)

    assert [p.world_size for p in plans] == [2, 3, 4, 5]
    assert all(isinstance(p, BatchPlan) for p in plans)


def test_plans_for_range_counts_nodes_times_processes_per_node():
    plans = plans_for_range(16, [1, 2, 4, 8], 1, 2, processes_per_node=8)

    assert [p.world_size for p in plans] == [8, 16]
    with pytest.raises(BatchPlanError, match="world size 24"):
        plans_for_range(16, [1, 2, 4, 8], 1, 3, processes_per_node=8)


# --- end to end with GlobalSampler: an elastic run consumes the same data --------------------------

GLOBAL_BATCH = 7
STEPS = 40
NUM_SAMPLES = GLOBAL_BATCH * 25  # epoch 0 ends at step 25, inside the run
SEED = 11


def _consume(sampler: GlobalSampler, plan: BatchPlan, step: int) -> list[int]:
    """Sample ids every rank of `plan` trains on at `step`, as a worker would read them."""
    batch = sampler.sample_ids_for_step(step)
    return [batch[p] for rank in range(plan.world_size) for positions, _ in plan.micro_batches(rank)
            for p in positions]


def _run(changes: dict[int, int]) -> dict[int, list[int]]:
    """Train STEPS steps, restarting from a fresh sampler at each step in `changes`."""
    consumed: dict[int, list[int]] = {}
    state = None
    step = 0
    while step < STEPS:
        world_size = changes[step]
        plan = plan_batch(GLOBAL_BATCH, [1, 2, 4], world_size)
        sampler = GlobalSampler(NUM_SAMPLES, GLOBAL_BATCH, SEED)
        if state is not None:
            sampler.load_state_dict(state)
        assert sampler.next_step == step
        while step < STEPS:
            consumed[step] = _consume(sampler, plan, step)
            sampler.advance(step)
            step += 1
            if step in changes:
                break
        state = sampler.state_dict()
    return consumed


def test_plan_batch_with_global_sampler_consumes_each_sample_once_across_world_size_changes():
    elastic = _run({0: 2, 7: 1, 13: 3, 29: 2})
    fixed = _run({0: 1})

    epoch_steps = NUM_SAMPLES // GLOBAL_BATCH
    epoch_zero = Counter(i for step in range(epoch_steps) for i in elastic[step])
    assert epoch_zero == Counter(range(NUM_SAMPLES))
    assert sorted(elastic) == list(range(STEPS))
    assert Counter(i for ids in elastic.values() for i in ids) == Counter(i for ids in fixed.values() for i in ids)
    # Stronger: every step trains on the same set of samples, whoever carries them.
    assert all(Counter(elastic[s]) == Counter(fixed[s]) for s in range(STEPS))
