"""The held-out loss: fixed chunks, every sample once, and the same value at any worker count."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tensile.config import EvalConfig, ModelConfig, config_from_dict
from tensile.data import TokenDataset, generate_corpus
from tensile.evaluation import HeldOutEvaluator, chunks_of_rank, evaluation_chunks, held_out_loss
from tensile.model import build_model

MODEL = ModelConfig(vocab_size=256, seq_len=16, d_model=32, n_layers=2, n_heads=2, dropout=0.1)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("eval") / "corpus")
    generate_corpus(url, num_samples=50, seq_len=MODEL.seq_len, seed=5, held_out_samples=61)
    return f"{url}/heldout"


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(MODEL).to(dtype)
    # Away from the initialisation, so per-sample losses differ in their low bits.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("samples, micro, world", [(61, 8, 1), (61, 8, 2), (61, 8, 3), (7, 8, 3), (16, 4, 5)])
def test_evaluation_chunks_give_every_sample_to_one_rank_at_any_world_size(samples, micro, world):
    chunks = evaluation_chunks(samples, micro)
    assert [len(c) for c in chunks[:-1]] == [micro] * (len(chunks) - 1)
    owned = sorted(i for rank in range(world) for chunk in chunks_of_rank(chunks, rank, world) for i in chunk)
    assert owned == list(range(samples))


def test_held_out_loss_divides_the_sample_ordered_sum_by_the_targets():
    result = held_out_loss([1.5, 2.5, 0.0], [3, 5, 0])
    assert (result.loss, result.loss_sum, result.samples, result.targets) == (0.5, 4.0, 3, 8)
    assert held_out_loss([], []).loss == 0.0


def _simulated_group(evaluator: HeldOutEvaluator, model: torch.nn.Module, world: int):
    """Every rank's evaluate in a thread of its own, with an all-reduce that sums what each passes."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    vectors: dict[int, torch.Tensor] = {}
    barrier = Barrier(world)

    def rank_evaluates(rank: int):
        def reduce_sum(vector: torch.Tensor) -> torch.Tensor:
            vectors[rank] = vector.clone()
            barrier.wait()
            return sum(vectors[r] for r in range(world))  # as gloo's ring adds them: any order is exact here

        return evaluator.evaluate(lambda tokens, keys: model(tokens, keys, 0), rank=rank, world_size=world,
                                  reduce_sum=reduce_sum)

    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(rank_evaluates, range(world)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_held_out_loss_is_the_same_at_1_2_and_3_workers(held_out, dtype):
    evaluator = HeldOutEvaluator(TokenDataset(held_out), micro_batch_size=8)
    model = _model(dtype)
    by_world = {world: _simulated_group(evaluator, model, world) for world in (1, 2, 3)}
    reference = by_world[1][0]
    assert reference.samples == 61 and reference.targets == 61 * MODEL.seq_len and 3.0 < reference.loss < 8.0
    for world, results in by_world.items():
        for result in results:  # every rank gets the same answer
            assert abs(result.loss - reference.loss) <= 1e-12, (dtype, world, result.loss, reference.loss)


def test_max_samples_takes_the_first_samples_of_the_split(held_out):
    assert HeldOutEvaluator(TokenDataset(held_out), max_samples=20).num_samples == 20
    assert HeldOutEvaluator(TokenDataset(held_out), max_samples=1000).num_samples == 61


GROUP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_evaluation import _model
from tensile.data import TokenDataset
from tensile.evaluation import HeldOutEvaluator
rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
model = _model()
def reduce_sum(vector):
    dist.all_reduce(vector)
    return vector
result = HeldOutEvaluator(TokenDataset({url!r}), micro_batch_size=8).evaluate(
    lambda tokens, keys: model(tokens, keys, 0), rank=rank, world_size=world, reduce_sum=reduce_sum)
open(out, "w").write(json.dumps(result.loss))
dist.destroy_process_group()
"""


def test_a_gloo_group_of_1_2_or_3_processes_reduces_to_the_same_held_out_loss(held_out, tmp_path):
    import subprocess

    script = tmp_path / "group.py"
    script.write_text(GROUP_SCRIPT.format(tests=str(Path(__file__).parent), url=held_out))
    losses: dict[tuple[int, int], float] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for world in (1, 2, 3):
        store = tmp_path / f"store-{world}"
        procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(world), str(store),
                                   str(tmp_path / f"loss-{world}-{rank}.json")], env=env) for rank in range(world)]
        assert [p.wait(timeout=120) for p in procs] == [0] * world
        for rank in range(world):
            losses[world, rank] = json.loads((tmp_path / f"loss-{world}-{rank}.json").read_text())
    reference = losses[1, 0]
    assert all(abs(loss - reference) <= 1e-12 for loss in losses.values()), losses


def test_eval_config_is_off_by_default_and_checked():
    assert not EvalConfig().enabled and not EvalConfig().due(10, final=True)
    every = EvalConfig(every_steps=5)
    assert [s for s in range(1, 13) if every.due(s, final=s == 12)] == [5, 10, 12]
    assert every.dataset_url("/data/corpus/") == "/data/corpus/heldout"
    assert EvalConfig(url="/elsewhere").dataset_url("/data") == "/elsewhere"
    with pytest.raises(Exception) as error:
        config_from_dict({"eval": {"every_steps": -1, "micro_batch_size": 0}})
    assert "eval.every_steps" in str(error.value) and "eval.micro_batch_size" in str(error.value)


def test_a_generated_corpus_is_the_same_with_a_held_out_split_beside_it(tmp_path):
    plain = generate_corpus(str(tmp_path / "a"), num_samples=30, seq_len=16, seed=9)
    split = generate_corpus(str(tmp_path / "b"), num_samples=30, seq_len=16, seed=9, held_out_samples=12)
    assert plain.data_version == split.data_version
    held = TokenDataset(str(tmp_path / "b" / "heldout"))
    assert held.num_samples == 12
    # The held-out samples are the text right after the corpus's last sample: no overlap.
    longer = generate_corpus(str(tmp_path / "c"), num_samples=42, seq_len=16, seed=9)
    assert torch.equal(held.read(list(range(12))), longer.read(list(range(30, 42))))
