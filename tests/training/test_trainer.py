"""The trainer's pure parts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tensile.trainer import step_timeout


@pytest.mark.parametrize(("configured", "slowest", "timeout"), [
    (60.0, 10.0, 60.0),    # steps well inside the configured watchdog
    (60.0, 80.0, 240.0),   # 8 → 1 workers: a 10 s step became 80 s, and is not a hang
    (60.0, 0.0, 60.0),     # before any step of the round
    (0.6, 1.0, 3.0),
])
def test_the_step_watchdog_follows_the_slowest_step_of_the_round(configured, slowest, timeout):
    assert step_timeout(configured, slowest) == pytest.approx(timeout)


def test_a_round_start_reads_the_events_since_the_last_summary_only(tmp_path, monkeypatch):
    import json
    import os
    import time
    from types import SimpleNamespace

    from tensile.elastic import ledger as ledger_module
    from tensile.elastic.ledger import RunLedger
    from tensile.trainer import Trainer

    ledger = RunLedger(tmp_path)
    trainer = SimpleNamespace(ledger=ledger)
    ledger.events_dir.mkdir(parents=True)

    def write(name: str, events: list[dict], modified: float) -> None:
        path = ledger.events_dir / name
        with path.open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in events)
        os.utime(path, (modified, modified))

    t0 = time.time() - 4 * ledger_module.CLOCK_MARGIN_S
    # Round 1 (long ago) in a file of its own, as that round's worker process wrote it.
    write("000001.jsonl", [{"t": t0, "event": "round-start", "resumed_step": 0}], t0)
    assert Trainer._run_history(trainer, 1).counts() == {"restarts": 0, "preemptions": 0, "steps_lost": 0}
    write("000001.jsonl", [{"t": t0 + s, "event": "step", "step": s} for s in range(1, 6)], t0 + 5)
    # Round 2 resumes from step 3 (steps 4 and 5 are redone), beyond the clock margin later.
    t2 = t0 + 2 * ledger_module.CLOCK_MARGIN_S
    write("000002.jsonl", [{"t": t2, "event": "round-start", "resumed_step": 3}], t2)
    assert Trainer._run_history(trainer, 2).counts() == {"restarts": 1, "preemptions": 0, "steps_lost": 2}
    now = time.time()
    write("000002.jsonl", [{"t": now + s, "event": "step", "step": 3 + s} for s in range(1, 4)], now + 3)
    write("000003.jsonl", [{"t": now + 10, "event": "round-start", "resumed_step": 5}], now + 10)

    read = []
    real_read = ledger_module._read_events
    monkeypatch.setattr(ledger_module, "_read_events", lambda path: read.append(path.name) or real_read(path))
    history = Trainer._run_history(trainer, 3)
    assert history.counts() == {"restarts": 2, "preemptions": 0, "steps_lost": 3}  # 2, then 6 → 5
    # Round 1's file was last written before round 2's summary was taken: not read again.
    assert read == ["000002.jsonl", "000003.jsonl"]
    assert ledger.latest_round_summary(before=4) == history.to_json()


# --- the loss mask in a step ----------------------------------------------------------------


class _Engine(torch.nn.Module):
    """DeepSpeed's engine as the step uses it: forward, backward of a scaled loss, step."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.logits = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, tokens, keys, step):
        return self.logits(tokens)

    def backward(self, loss, scale_wrt_gas):
        loss.backward()

    def step(self):
        pass


def _step(dataset_url: str, *, world_size: int = 1, rank: int = 0, global_batch: int = 6, monkeypatch):
    from tensile.batching import plan_batch
    from tensile.data import GlobalSampler, PrefetchingReader, TokenDataset
    from tensile.elastic.signals import CheckpointRequest, StopRequest
    from tensile.fault_hooks import NO_FAULTS
    from tensile.placement import CPU_PLACEMENT
    from tensile.trainer import Trainer

    monkeypatch.setattr("tensile.trainer.dist.all_reduce", lambda tensor: None)
    dataset = TokenDataset(dataset_url)
    trainer = SimpleNamespace(
        faults=NO_FAULTS, sampler=GlobalSampler(dataset.num_samples, global_batch, seed=1), dataset=dataset,
        reader=PrefetchingReader(dataset), config=SimpleNamespace(run=SimpleNamespace(steps=4)),
        plan=plan_batch(global_batch, [2], world_size), rank=rank, world_size=world_size,
        engine=_Engine(50), checkpointer=SimpleNamespace(poll=lambda: None), _fenced=None,
        _background_save_ended=lambda result: False, checkpoint_request=CheckpointRequest(), stop=StopRequest(),
        placement=CPU_PLACEMENT, _keyed_forward=True)
    trainer._step_request = lambda step: Trainer._step_request(trainer, step)
    trainer._padded = lambda batch, padding: Trainer._padded(trainer, batch, padding)
    loss, _, _ = Trainer._train_step(trainer, 0)
    trainer.reader.close()
    return loss, trainer.engine.logits.weight.grad.clone()


def _masked_dataset(url: str, tokens, masks) -> None:
    from tensile.data import TokenShardWriter

    with TokenShardWriter(url, seq_len=tokens.shape[1] - 1, vocab_size=50, samples_per_shard=4,
                          loss_mask=True) as writer:
        for sample, mask in zip(tokens, masks):
            writer.write(sample, mask)


def test_a_step_ignores_masked_targets_and_normalises_by_the_unmasked_count(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50, size=(6, 9))
    masks = rng.random((6, 9)) < 0.5
    masks[:, 0] = False
    _masked_dataset(str(tmp_path / "a"), tokens, masks)

    loss, _ = _step(str(tmp_path / "a"), monkeypatch=monkeypatch)
    engine = _Engine(50)
    samples = torch.from_numpy(tokens)
    per_token = torch.nn.functional.cross_entropy(engine.logits(samples[:, :-1]).reshape(-1, 50),
                                                  samples[:, 1:].reshape(-1), reduction="none")
    target_mask = torch.from_numpy(masks[:, 1:]).reshape(-1)
    expected = per_token[target_mask].sum() / target_mask.sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_a_step_is_the_same_whatever_its_masked_targets_hold(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 50, size=(6, 9))
    masks = np.ones((6, 9), dtype=bool)
    masks[:, 6:] = False  # the last three targets of every sample are masked...
    changed = tokens.copy()
    changed[:, 8] = (tokens[:, 8] + 1) % 50  # ...and the last token, never an input, differs
    _masked_dataset(str(tmp_path / "a"), tokens, masks)
    _masked_dataset(str(tmp_path / "b"), changed, masks)

    first, second = _step(str(tmp_path / "a"), monkeypatch=monkeypatch), _step(str(tmp_path / "b"), monkeypatch=monkeypatch)
    assert first[0] == pytest.approx(second[0], rel=1e-7) and torch.equal(first[1], second[1])


def test_a_masked_step_gives_the_same_update_at_any_worker_count(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(5)
    tokens, masks = rng.integers(0, 50, size=(12, 9)), rng.random((12, 9)) < 0.4
    _masked_dataset(str(tmp_path / "ds"), tokens, masks)

    _, alone = _step(str(tmp_path / "ds"), monkeypatch=monkeypatch)
    # DeepSpeed averages the ranks' gradients; at 4 workers the last two carry a padding sample.
    shared = sum(_step(str(tmp_path / "ds"), world_size=4, rank=r, monkeypatch=monkeypatch)[1] for r in range(4)) / 4
    assert torch.allclose(alone, shared, atol=1e-6)
