"""Which device this worker process computes on, and where the tensors it hands to the engine,
to collectives and to checkpoint copies must live: decided once, from LOCAL_RANK, before any
collective, and read by the worker's start-up, the trainer and the checkpointer alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensile.errors import NotRetryable

BACKEND_NCCL = "nccl"
BACKEND_GLOO = "gloo"


class PlacementError(NotRetryable, RuntimeError):
    """This process cannot be given a device (LOCAL_RANK beyond the node's GPUs): the node's
    processes_per_node does not fit its GPUs, which no retry changes."""


@dataclass(frozen=True, slots=True)
class Placement:
    """One process's device and its default process group's backend: `cuda:LOCAL_RANK` with
    NCCL on a GPU node, the CPU with gloo otherwise."""

    device: torch.device
    """Where the model, its inputs and its gradients live (DeepSpeed puts the engine on the
    accelerator's current device, which `activate` makes this one)."""
    backend: str
    """The default process group's backend: NCCL takes only CUDA tensors, gloo CPU ones."""

    @classmethod
    def for_local_rank(cls, local_rank: int, *, cuda_available: bool, cuda_devices: int = 0) -> "Placement":
        """Local rank r of a node computes on its r-th GPU; with no GPU, on the CPU."""
        if not cuda_available:
            return cls(device=torch.device("cpu"), backend=BACKEND_GLOO)
        if not 0 <= local_rank < cuda_devices:
            raise PlacementError(f"LOCAL_RANK {local_rank} has no GPU: this node shows {cuda_devices}; run at most "
                                 f"{cuda_devices} processes per node (torchrun --nproc-per-node)")
        return cls(device=torch.device("cuda", local_rank), backend=BACKEND_NCCL)

    @classmethod
    def of_this_process(cls, local_rank: int) -> "Placement":
        available = torch.cuda.is_available()
        return cls.for_local_rank(local_rank, cuda_available=available,
                                  cuda_devices=torch.cuda.device_count() if available else 0)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def collective_device(self) -> torch.device:
        """Where a tensor handed to a collective of the default group must be."""
        return self.device if self.backend == BACKEND_NCCL else torch.device("cpu")

    @property
    def pin_host_memory(self) -> bool:
        """Host buffers are pinned only when there is a device to copy to and from without
        blocking: pinning costs page-locked memory and buys nothing on the CPU."""
        return self.on_cuda

    def activate(self) -> None:
        """Make this device the process's current one. Before the first collective: otherwise
        every local rank's NCCL objects land on cuda:0, which NCCL rejects with several GPUs."""
        if self.on_cuda:
            torch.cuda.set_device(self.device)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor moved to the compute device: copied from pinned memory without blocking
        the host on CUDA (the copy is ordered before the kernels that read it), as it is on the CPU."""
        if not self.on_cuda:
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def for_collective(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor where the default group's backend takes it."""
        if self.collective_device.type == "cpu":
            return tensor
        return tensor.to(self.collective_device)

    def host_buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """Host memory for copies out of the device (checkpoint snapshots)."""
        return torch.empty(numel, dtype=dtype, pin_memory=self.pin_host_memory)


CPU_PLACEMENT = Placement(device=torch.device("cpu"), backend=BACKEND_GLOO)
"""Tensile's default here: CPU compute with gloo."""
