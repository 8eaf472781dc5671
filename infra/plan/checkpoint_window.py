"""Whether a job's emergency checkpoint can be saved inside the spot notice: its bytes (estimated
from the model in its training config) through the node's staging disk, then to S3, against the
notice and the pod's grace period; and the node-local staging disks the GPU node classes get."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

SPOT_NOTICE_SECONDS = 120
"""EC2's spot interruption notice: the instance is reclaimed this long after it."""
NOTICE_TO_SIGTERM_SECONDS = 10
"""Assumed: the notice reaches Karpenter through the interruption queue and the drain evicts the
pod (SIGTERM) within this many seconds of it (Karpenter polls SQS continuously)."""

TORCHRUN_STOP_SECONDS = 30
"""torchrun signals its workers on SIGTERM and SIGKILLs them this long after (torch 2.13's elastic
agent, `PContext.close(death_sig, timeout=30)`; docs/design/checkpoints.md, "The SIGTERM window"):
until the launcher holds SIGTERM itself, no emergency save gets longer."""

ZERO_BYTES_PER_PARAMETER = {"fp32": 12, "bf16": 14, "fp16": 14}
"""What a checkpoint of Adam under ZeRO holds per parameter: fp32 weights (4) and both moments
(4 + 4) = 12; with bf16/fp16 weights, the 2-byte weights on top of the fp32 master copy = 14.
Loss scaler, scheduler, RNG and sampler states are noise next to these."""

NVME_WRITE_MIB_PER_S = {"p5": 2000, "p5e": 2000, "p5en": 2000, "p4d": 1000, "p4de": 1000, "g6e": 1000,
                        "g6": 500, "g5": 500}
"""Assumed sequential write rate of one instance-store NVMe device, by family (not measured here:
run `fio` on a node to replace it). RAID0 over the devices adds them up."""
INSTANCE_STORE_DEVICES: Mapping[str, tuple[int, int]] = {
    # instance type: (NVMe devices, GB each), from the EC2 instance-store volume table.
    "g5.xlarge": (1, 250), "g5.2xlarge": (1, 450), "g5.4xlarge": (1, 600), "g5.12xlarge": (1, 3800),
    "g5.48xlarge": (2, 3800),
    "g6.xlarge": (1, 250), "g6.2xlarge": (1, 450), "g6.4xlarge": (1, 600), "g6.12xlarge": (4, 940),
    "g6.48xlarge": (8, 940),
    "g6e.xlarge": (1, 250), "g6e.2xlarge": (1, 450), "g6e.12xlarge": (2, 1900), "g6e.24xlarge": (2, 1900),
    "g6e.48xlarge": (4, 1900),
    "p4d.24xlarge": (8, 1000), "p4de.24xlarge": (8, 1000),
    "p5.48xlarge": (8, 3840), "p5e.48xlarge": (8, 3840), "p5en.48xlarge": (8, 3840),
}
NETWORK_GBPS = {
    "g5.xlarge": 10, "g5.2xlarge": 10, "g5.4xlarge": 25, "g5.12xlarge": 40, "g5.48xlarge": 100,
    "g6.xlarge": 10, "g6.2xlarge": 10, "g6.4xlarge": 25, "g6.12xlarge": 40, "g6.48xlarge": 100,
    "g6e.xlarge": 20, "g6e.2xlarge": 20, "g6e.12xlarge": 100, "g6e.24xlarge": 200, "g6e.48xlarge": 400,
    "p4d.24xlarge": 400, "p4de.24xlarge": 400, "p5.48xlarge": 3200, "p5e.48xlarge": 3200, "p5en.48xlarge": 3200,
}
"""Network bandwidth per instance (EC2 instance type pages; "up to" figures are burst)."""
S3_NETWORK_SHARE = 0.5
"""Of the node's network bandwidth, what the checkpoint upload may count on reaching S3."""
S3_MIB_PER_CONNECTION = 80
"""One S3 request stream moves about 85-90 MB/s (AWS, "Performance guidelines for Amazon S3")."""
S3_PARTS_IN_FLIGHT_PER_PROCESS = 4
"""The trainer uploads each file with this many parts in flight (training/tensile/s3/objects.py,
S3Settings.max_concurrency; tests/infra/test_checkpoint_window.py keeps them equal)."""
GP3_DEFAULT_MIB_PER_S = 125
GP3_STAGING_MIB_PER_S = 500
"""The root gp3 throughput of node classes without instance store: staging goes to the root
volume there (gp3 throughput above 125 MiB/s costs about $0.04 per MiB/s-month: ~$15/node-month)."""


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def has_instance_store(instance_type: str) -> bool:
    return instance_type in INSTANCE_STORE_DEVICES


def uses_instance_store(instance_types: Iterable[str]) -> bool:
    """RAID0 for a node class only when every type it launches has NVMe instance store: the
    kubelet's and containerd's directories (so every emptyDir) then live on the array."""
    types = list(instance_types)
    return bool(types) and all(has_instance_store(t) for t in types)


def staging_mib_per_s(instance_type: str, *, raid0: bool) -> float:
    """Write rate of the disk that holds a node's emptyDirs (the trainer's local checkpoint dir)."""
    if raid0 and has_instance_store(instance_type):
        devices, _ = INSTANCE_STORE_DEVICES[instance_type]
        return devices * NVME_WRITE_MIB_PER_S.get(family(instance_type), 500)
    return GP3_STAGING_MIB_PER_S


def s3_mib_per_s(instance_type: str, processes: int) -> float:
    """Upload rate of one node: its processes' parallel part uploads, capped by its network."""
    connections = processes * S3_PARTS_IN_FLIGHT_PER_PROCESS * S3_MIB_PER_CONNECTION
    network = NETWORK_GBPS.get(instance_type, 10) * 1e9 / 8 / 2**20 * S3_NETWORK_SHARE
    return min(connections, network)


# ---------------------------------------------------------------------------------------------
# The model's size from the trainer's config
# ---------------------------------------------------------------------------------------------

MODEL_DEFAULTS = {"vocab_size": 256, "seq_len": 128, "d_model": 128, "n_layers": 4, "mlp_ratio": 4,
                  "tie_embeddings": True}
"""The trainer's ModelConfig defaults (training/tensile/config.py; the test keeps them equal)."""


def causal_lm_parameters(model: Mapping) -> int:
    """Parameters of Tensile's CausalLM for a `model:` section: token and position embeddings,
    per block attention (4 d² + 4 d) and MLP (2 r d² + r d + d) with two layer norms (4 d), a
    final norm, and an output head unless tied. Checked against the real model in the test."""
    m = {**MODEL_DEFAULTS, **{k: v for k, v in model.items() if k in MODEL_DEFAULTS}}
    v, s, d, layers, r = m["vocab_size"], m["seq_len"], m["d_model"], m["n_layers"], m["mlp_ratio"]
    block = (4 * d * d + 4 * d) + (2 * r * d * d + r * d + d) + 4 * d
    head = 0 if m["tie_embeddings"] else v * d
    return v * d + s * d + layers * block + 2 * d + head


def precision_of(doc: Mapping) -> str:
    precision = doc.get("precision", "fp32")
    if isinstance(precision, Mapping):
        precision = precision.get("dtype", "fp32")
    return str(precision)


# ---------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SaveEstimate:
    instance_type: str
    parameters: int
    bytes_per_parameter: int
    node_bytes: int
    """What the busiest node writes: the whole checkpoint over the fewest nodes the job runs on."""
    disk_mib_per_s: float
    s3_mib_per_s: float
    window_seconds: int

    @property
    def seconds(self) -> float:
        """Staged to the node's disk, then uploaded: the emergency save is durable only in S3."""
        mib = self.node_bytes / 2**20
        return mib / self.disk_mib_per_s + mib / self.s3_mib_per_s

    @property
    def fits(self) -> bool:
        return self.seconds <= self.window_seconds


def save_window_seconds(emergency_checkpoint_seconds: int) -> int:
    """The save must end before the instance goes (notice minus the time to SIGTERM), within the
    time the pod's grace period gives it (emergencyCheckpointSeconds; the grace adds the margin
    for the pod's exit), and before torchrun kills the workers."""
    return min(SPOT_NOTICE_SECONDS - NOTICE_TO_SIGTERM_SECONDS, emergency_checkpoint_seconds, TORCHRUN_STOP_SECONDS)


def estimate_saves(*, parameters: int, precision: str, min_nodes: int, processes: int,
                   instance_types: Iterable[str], raid0: Mapping[str, bool],
                   emergency_checkpoint_seconds: int) -> list[SaveEstimate]:
    """One estimate per instance type the job may land on (Karpenter may pick any)."""
    per_parameter = ZERO_BYTES_PER_PARAMETER.get(precision, ZERO_BYTES_PER_PARAMETER["fp32"])
    node_bytes = math.ceil(parameters * per_parameter / max(1, min_nodes))
    window = save_window_seconds(emergency_checkpoint_seconds)
    return [SaveEstimate(instance_type=t, parameters=parameters, bytes_per_parameter=per_parameter,
                         node_bytes=node_bytes, disk_mib_per_s=staging_mib_per_s(t, raid0=raid0.get(t, False)),
                         s3_mib_per_s=s3_mib_per_s(t, processes), window_seconds=window)
            for t in instance_types]


def save_problem(estimate: SaveEstimate, *, job: str, min_nodes: int) -> str:
    """The refusal: the numbers, and what would make it fit."""
    gb = estimate.node_bytes / 1e9
    mib = estimate.node_bytes / 2**20
    disk_s, s3_s = mib / estimate.disk_mib_per_s, mib / estimate.s3_mib_per_s
    nodes_needed = math.ceil(min_nodes * estimate.seconds / estimate.window_seconds)
    return (f"job {job}: the emergency checkpoint on {estimate.instance_type} cannot be saved in time: "
            f"{estimate.parameters:,} parameters × {estimate.bytes_per_parameter} bytes (Adam under ZeRO) over "
            f"{min_nodes} node(s) = {gb:.1f} GB per node; staging at {estimate.disk_mib_per_s:.0f} MiB/s takes "
            f"{disk_s:.0f} s and the upload to S3 at {estimate.s3_mib_per_s:.0f} MiB/s {s3_s:.0f} s, "
            f"{estimate.seconds:.0f} s in all, but the window is {estimate.window_seconds} s "
            f"(the least of the {SPOT_NOTICE_SECONDS} s spot notice less {NOTICE_TO_SIGTERM_SECONDS} s, "
            f"emergencyCheckpointSeconds and torchrun's {TORCHRUN_STOP_SECONDS} s stop timeout): raise elastic.min_nodes (and max_nodes) to {nodes_needed} "
            f"so each node saves less, "
            f"or run it on instance types with NVMe instance store (RAID0 staging) and more network")
