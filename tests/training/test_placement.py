"""Device discipline without a GPU: the device is chosen from LOCAL_RANK and made current before
the process group exists, and every tensor the trainer hands to the engine, to the loss and to a
collective went to the device the placement names (here a claimed cuda:1 with NCCL, on the CPU)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import tensile.trainer as trainer_module
from tensile.config import ConfigError, config_from_dict
from tensile.data import generate_corpus
from tensile.elastic.signals import StepWatchdog, StopRequest
from tensile.placement import CPU_PLACEMENT, Placement, PlacementError
from tensile.worker import WorkerIdentity, join_process_group


def test_placement_of_a_local_rank_is_its_gpu_with_nccl_else_the_cpu_with_gloo():
    assert Placement.for_local_rank(3, cuda_available=True, cuda_devices=8) == Placement(
        device=torch.device("cuda", 3), backend="nccl")
    assert Placement.for_local_rank(3, cuda_available=False) == CPU_PLACEMENT
    gpu = Placement.for_local_rank(0, cuda_available=True, cuda_devices=1)
    assert (gpu.collective_device, gpu.pin_host_memory) == (torch.device("cuda", 0), True)
    assert (CPU_PLACEMENT.collective_device, CPU_PLACEMENT.pin_host_memory) == (torch.device("cpu"), False)


def test_placement_refuses_a_local_rank_past_the_nodes_gpus():
    with pytest.raises(PlacementError, match="LOCAL_RANK 8 has no GPU: this node shows 8"):
        Placement.for_local_rank(8, cuda_available=True, cuda_devices=8)


def test_the_device_is_made_current_from_local_rank_before_the_process_group_exists(monkeypatch):
    import deepspeed

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(deepspeed, "init_distributed",
                        lambda dist_backend, **kwargs: calls.append(("init_distributed", dist_backend)))
    config = SimpleNamespace(elastic=SimpleNamespace(collective_timeout_s=5.0))
    me = WorkerIdentity(rank=6, world_size=8, local_rank=2, node_dir=None, node_id="n", agent_pid=0,
                        rdzv_endpoint=None, rdzv_local_addr=None)
    placement = join_process_group(config, me)
    assert calls == [("set_device", torch.device("cuda", 2)), ("init_distributed", "nccl")]
    assert placement.device == torch.device("cuda", 2)


# ---- a real step through a checker ---------------------------------------------------------

def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class ClaimedDevice:
    """A placement that claims cuda:1 and NCCL while computing on the CPU: its moves are copies
    it remembers, so a checker can tell a tensor that went to the device from one born on the host."""

    device = torch.device("cuda", 1)
    backend = "nccl"
    collective_device = device
    pin_host_memory = False

    def __init__(self) -> None:
        self.moved: list[torch.Tensor] = []  # kept alive, so no storage address is reused
        self.for_collectives: list[torch.Tensor] = []

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        self.moved.append(tensor.clone())
        return self.moved[-1]

    def for_collective(self, tensor: torch.Tensor) -> torch.Tensor:
        self.for_collectives.append(tensor.clone())
        return self.for_collectives[-1]

    def on_device(self, tensor: torch.Tensor, computed: list[torch.Tensor]) -> bool:
        return any(_storage(tensor) == _storage(t) for t in [*self.moved, *computed])


class DeviceCheckingEngine:
    """The engine, checking its inputs are on the claimed device; its outputs are (it computes there)."""

    def __init__(self, engine, placement: ClaimedDevice, computed: list[torch.Tensor]):
        self.engine, self.placement, self.computed = engine, placement, computed
        self.checked = 0

    def __call__(self, *inputs):
        for position, value in enumerate(inputs):
            if torch.is_tensor(value):
                assert self.placement.on_device(value, self.computed), (
                    f"input {position} of the engine's forward was never moved to {self.placement.device}")
                self.checked += 1
        self.computed.append(self.engine(*inputs))
        return self.computed[-1]

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture
def one_process_group(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                        "WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def small_config(tmp_path: Path, **sections):
    data = str(tmp_path / "corpus")
    generate_corpus(data, num_samples=64, seq_len=16, seed=3, held_out_samples=10)
    return config_from_dict({**sections,
        "run": {"steps": 2, "seed": 5},
        "model": {"vocab_size": 256, "seq_len": 16, "d_model": 16, "n_layers": 1, "n_heads": 2},
        "batch": {"global_batch_size": 4, "micro_batch_sizes": [2]},
        "elastic": {"min_workers": 1, "max_workers": 1},
        "data": {"url": data},
        "checkpoint": {"shared_dir": str(tmp_path / "shared"), "local_dir": str(tmp_path / "local")}})


class CheckedCollectives:
    """torch.distributed, with all_reduce checking its tensor is where the placement's backend takes it."""

    def __init__(self, placement: ClaimedDevice):
        self.placement, self.reduced = placement, []

    def all_reduce(self, tensor, *args, **kwargs):
        assert any(_storage(tensor) == _storage(t) for t in self.placement.for_collectives), (
            f"a tensor handed to all_reduce is not where the {self.placement.backend} group takes it")
        self.reduced.append(tensor)
        return dist.all_reduce(tensor, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(dist, name)


def test_a_step_hands_the_engine_loss_and_collectives_only_tensors_on_the_placements_device(
        tmp_path, monkeypatch, one_process_group):
    placement, computed = ClaimedDevice(), []
    trainer = trainer_module.Trainer(small_config(tmp_path), rank=0, world_size=1, local_dir=tmp_path / "local",
                                     stop=StopRequest(), watchdog=StepWatchdog(60, lambda s: None), control=None,
                                     placement=placement)
    trainer.round = trainer_module.RoundStart(None, 1, "t" * 32, None)
    trainer.build()
    trainer.engine = engine = DeviceCheckingEngine(trainer.engine, placement, computed)
    trainer.checkpointer = SimpleNamespace(poll=lambda: None)

    real_loss = trainer_module.token_loss_sum

    def checked_loss(logits, targets, mask):
        for name, value in (("logits", logits), ("targets", targets), ("loss mask", mask)):
            assert placement.on_device(value, computed), f"the {name} handed to the loss is not on {placement.device}"
        return real_loss(logits, targets, mask)

    collectives = CheckedCollectives(placement)
    monkeypatch.setattr(trainer_module, "token_loss_sum", checked_loss)
    monkeypatch.setattr(trainer_module, "dist", collectives)
    loss, stop_votes, checkpoint_votes = trainer._train_step(0)
    assert engine.checked == 2 * 2, "tokens and sample keys of both micro-batches were checked"
    assert len(collectives.reduced) == 1 and (stop_votes, checkpoint_votes) == (0, 0) and 0 < loss < 10


def test_an_evaluation_hands_the_engine_and_its_all_reduce_tensors_on_the_placements_device(
        tmp_path, monkeypatch, one_process_group):
    placement, computed = ClaimedDevice(), []
    config = small_config(tmp_path, eval={"every_steps": 1, "micro_batch_size": 4})
    trainer = trainer_module.Trainer(config, rank=0, world_size=1, local_dir=tmp_path / "local", stop=StopRequest(),
                                     watchdog=StepWatchdog(60, lambda s: None), control=None, placement=placement)
    trainer.round = trainer_module.RoundStart(None, 1, "t" * 32, None)
    trainer.build()
    trainer.engine = engine = DeviceCheckingEngine(trainer.engine, placement, computed)
    collectives = CheckedCollectives(placement)
    monkeypatch.setattr(trainer_module, "dist", collectives)
    trainer._evaluate(1)
    assert engine.checked == 2 * 3, "tokens and sample keys of the 3 chunks (4 + 4 + 2 samples) were checked"
    assert len(collectives.reduced) == 1 and engine.training, "one all-reduce; back in training mode after"
    (record,) = [e for e in trainer.ledger.events() if e["event"] == "eval"]
    assert record["samples"] == 10 and record["targets"] == 10 * 16 and 0 < record["loss"] < 10


def test_fp16_on_a_cpu_worker_is_refused_naming_the_field_and_the_alternative(tmp_path):
    config = small_config(tmp_path)
    config.precision.dtype = "fp16"
    with pytest.raises(ConfigError) as refused:
        trainer_module.Trainer(config, rank=0, world_size=1, local_dir=tmp_path / "local", stop=StopRequest(),
                               watchdog=StepWatchdog(60, lambda s: None), control=None)
    assert refused.value.problems == [("precision.dtype", "fp16 needs a CUDA GPU: this worker computes on the "
                                       "cpu, which has no fp16 kernels here; use bf16 (or fp32) on CPU workers")]



def test_a_node_without_a_gpu_for_each_process_is_not_retried():
    """Every round would meet the same node: the run ends with the reason, spending no budget."""
    from tensile.errors import NotRetryable

    assert issubclass(PlacementError, NotRetryable)
