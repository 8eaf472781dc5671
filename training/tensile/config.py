"""Typed training configuration, loaded from YAML and validated once.

Every problem in a file is reported together, each with its property path and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensile import contract
from tensile.errors import NotRetryable


class ConfigError(ValueError, NotRetryable):
    """One or more problems in a training config, each as (property path, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"  {path}: {message}" for path, message in problems]
        super().__init__(f"{len(problems)} problem(s){where}:\n" + "\n".join(lines))


class _Problems:
    """Collects problems of one config section; raises them together at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def check(self, ok: bool, path: str, message: str) -> None:
        if not ok:
            self.items.append((path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


DEFAULT_MODEL_FIELDS = ("d_model", "n_layers", "n_heads", "mlp_ratio", "tie_embeddings")
"""Fields that shape only Tensile's own CausalLM; a factory model takes its shape from factory_args."""


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    vocab_size: int = 256
    """Number of token ids; the byte tokenizer needs 256. Also read by a factory model."""
    seq_len: int = 128
    """Longest input the model takes: the data's samples are seq_len + 1 tokens. Tensile needs it
    for every model, a factory's too."""
    d_model: int = 128
    """Width of the residual stream (the default model only)."""
    n_layers: int = 4
    """Number of transformer blocks (the default model only)."""
    n_heads: int = 4
    """Attention heads per block; must divide d_model (the default model only)."""
    mlp_ratio: int = 4
    """Hidden width of each MLP as a multiple of d_model (the default model only)."""
    dropout: float = 0.1
    """Drop probability at the embedding and after each attention and MLP sublayer."""
    tie_embeddings: bool = True
    """Use the token embedding as the output projection (the default model only)."""
    factory: str = ""
    """`package.module:callable` building the model, called as `factory(model_config,
    **factory_args)`; empty means Tensile's CausalLM. The forward contract is in
    docs/design/models.md: forward(tokens [B, T]) or forward(tokens, sample_keys, step),
    returning logits [B, T, V] or an object with `.logits`."""
    factory_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of model.factory (JSON values). Part of the model's identity: a
    checkpoint resumes only under the same factory and arguments."""
    dropout_seed: int = 0
    """Key mixed into every dropout mask, so masks change between runs only when this does."""
    frozen: list[str] = field(default_factory=list)
    """Parameter-name prefixes to freeze (not trained, not in the optimizer), e.g.
    `position_embedding` or `blocks.0.`: fine-tuning on top of fixed layers."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (less
    memory, about one more forward of compute). The default model checkpoints per block; a factory
    model must have gradient_checkpointing_enable() (Hugging Face models do)."""

    def __post_init__(self) -> None:
        default_model = not self.factory
        checked = ("vocab_size", "seq_len") + (("d_model", "n_layers", "n_heads", "mlp_ratio") if default_model else ())
        for name in checked:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if default_model and self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} must be divisible by ModelConfig.n_heads={self.n_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        module, _, attribute = self.factory.partition(":")
        if self.factory and not (module and attribute and all(p.isidentifier() for p in module.split("."))):
            raise ValueError(f"ModelConfig.factory must look like 'package.module:callable', got {self.factory!r}")
        if not isinstance(self.factory_args, dict) or not all(isinstance(k, str) and k.isidentifier()
                                                              for k in self.factory_args):
            raise ValueError(f"ModelConfig.factory_args must be a mapping of keyword-argument names to values, "
                             f"got {self.factory_args!r}")
        if self.factory_args:
            if default_model:
                raise ValueError("ModelConfig.factory_args are keyword arguments of model.factory, which is not "
                                 "set; set model.factory to 'package.module:callable' or remove factory_args")
            why = _not_json(self.factory_args)
            if why:
                raise ValueError(f"ModelConfig.factory_args must hold JSON values (strings, numbers, booleans, "
                                 f"null, lists and mappings with string keys): {why}")
            defaults = ModelConfig()
            shaped = [name for name in DEFAULT_MODEL_FIELDS if getattr(self, name) != getattr(defaults, name)]
            if shaped:
                raise ValueError(f"ModelConfig.{', '.join(shaped)} shape only Tensile's default model; a factory "
                                 f"model takes its shape from model.factory_args: move them there or remove them")
        if isinstance(self.dropout_seed, bool) or not isinstance(self.dropout_seed, int):
            raise ValueError(f"ModelConfig.dropout_seed must be an integer, got {self.dropout_seed!r}")
        if not isinstance(self.frozen, list) or not all(isinstance(p, str) and p for p in self.frozen):
            raise ValueError(f"ModelConfig.frozen must be a list of parameter-name prefixes, got {self.frozen!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(f"ModelConfig.activation_checkpointing must be true or false, "
                             f"got {self.activation_checkpointing!r}")

    def identity(self) -> dict[str, Any]:
        """The fields that make the model's trajectory: all but the memory switches. factory_args
        appears only when given, so configs from before it hash as they did."""
        fields = dataclasses.asdict(self)
        del fields["activation_checkpointing"]  # recomputation, not another model
        if not fields["factory_args"]:
            del fields["factory_args"]
        return fields


def _not_json(value: Any, path: str = "factory_args") -> str | None:
    """Where value is not plain JSON (which is what the model's hash and the dumped config hold)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if value == value and abs(value) != float("inf") else f"{path} is {value!r}"
    if isinstance(value, list):
        return next((why for i, v in enumerate(value) if (why := _not_json(v, f"{path}[{i}]"))), None)
    if isinstance(value, dict):
        for key, v in value.items():
            if not isinstance(key, str):
                return f"{path} has the key {key!r}, not a string"
            if why := _not_json(v, f"{path}.{key}"):
                return why
        return None
    return f"{path} is {value!r} ({type(value).__name__})"


@dataclass(kw_only=True, slots=True)
class RunConfig:
    name: str = "tensile"
    """Run identifier: the rendezvous id and the name in logs and metrics."""
    seed: int = 1234
    """Seeds model initialisation, data order and per-sample dropout."""
    steps: int = 100
    """Optimizer steps to train for; the run completes after this many. It sets the length of the
    cosine schedule, so a checkpoint trained toward another run.steps is refused (see
    extend_from_steps)."""
    extend_from_steps: int = 0
    """Train longer: the run.steps the resume checkpoint was trained toward, when run.steps now
    asks for more. The cosine schedule is recomputed over the new run.steps from the resume step;
    the change is recorded in the ledger (`train-longer`) and in every later checkpoint. 0: a
    checkpoint trained toward another run.steps is refused as incompatible."""
    log_every: int = 10
    """Print a progress line every this many steps (every step is still recorded)."""
    metrics_port: int = 0
    """Prometheus endpoint on each node (its first worker); 0 = off. TENSILE_METRICS_PORT overrides."""
    tensorboard_dir: str = ""
    """Also write TensorBoard scalars (training loss, held-out loss, world size) here, from rank 0;
    empty = off. Needs the `tensorboard` extra (`pip install 'tensile-training[tensorboard]'`).
    Relative paths are resolved against the config file's directory."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(bool(self.name) and self.name.replace("-", "").replace("_", "").isalnum(),
                "name", f"must be letters, digits, '-' or '_', got {self.name!r}")
        p.check(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        p.check(0 <= self.extend_from_steps < max(self.steps, 1), "extend_from_steps",
                f"must be 0 (off) or the earlier run.steps, below run.steps ({self.steps}) to train longer, "
                f"got {self.extend_from_steps}")
        p.check(self.log_every > 0, "log_every", f"must be > 0, got {self.log_every}")
        p.check(0 <= self.metrics_port < 65536, "metrics_port", f"must be a port number or 0, got {self.metrics_port}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class CorpusConfig:
    num_samples: int = 8192
    """Samples (of seq_len + 1 tokens) to generate."""
    seed: int = 7
    """Seed of the generated text; changes the data version."""
    held_out_samples: int = 0
    """Samples of the same text, generated after the corpus's last one, written to `<url>/heldout`
    for evaluation (eval.every_steps); 0 = none. The training samples (and the data version) are
    the same whatever this is."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.num_samples > 0, "num_samples", f"must be > 0, got {self.num_samples}")
        p.check(self.held_out_samples >= 0, "held_out_samples", f"must be >= 0 (0: none), got {self.held_out_samples}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class DataConfig:
    url: str = contract.DEFAULT_DATA_URL
    """Sharded token dataset: a directory or an fsspec URL. Relative paths are resolved
    against the config file's directory."""
    generate: CorpusConfig | None = None
    """If set and the dataset does not exist, generate the built-in corpus there first."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(bool(self.url), "url", "must name a dataset directory or URL")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """Held-out loss during training: every rank evaluates fixed chunks of the split and the
    per-sample sums are summed in sample order, so the loss is the same at any worker count."""

    every_steps: int = 0
    """Evaluate after every this many steps (and after the last); 0 = off."""
    url: str = ""
    """The held-out dataset; empty means `<data.url>/heldout` (what `tensile data prepare --held-out`
    and data.generate.held_out_samples write). Relative paths resolve against the config file's directory."""
    max_samples: int = 0
    """Evaluate only the split's first this many samples (0: all of them), to bound its time."""
    micro_batch_size: int = 8
    """Samples per forward pass. Fixed, not per world size: each sample is evaluated in the same
    batch whatever the worker count, so its loss is the same bits."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.every_steps >= 0, "every_steps", f"must be >= 0 (0: off), got {self.every_steps}")
        p.check(self.max_samples >= 0, "max_samples", f"must be >= 0 (0: the whole split), got {self.max_samples}")
        p.check(self.micro_batch_size > 0, "micro_batch_size", f"must be > 0, got {self.micro_batch_size}")
        p.raise_if_any()

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0

    def dataset_url(self, data_url: str) -> str:
        return self.url or f"{data_url.rstrip('/')}/{contract.HELD_OUT_DIRECTORY}"

    def due(self, step: int, *, final: bool) -> bool:
        """Whether the held-out loss is computed after `step` (1-based: the steps done)."""
        return self.enabled and (final or step % self.every_steps == 0)


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to 2-D weights only."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam beta1, beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 10
    """Linear warm-up steps before cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 turns clipping off."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        p.check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        p.check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                f"must be two numbers in [0, 1), got {self.betas}")
        p.check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        p.check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        p.check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        p.check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class BatchConfig:
    global_batch_size: int = contract.DEFAULT_GLOBAL_BATCH_SIZE
    """Samples per optimizer step, whatever the number of nodes; split over every process
    (nodes × elastic.processes_per_node), so it must be at least the largest world size."""
    micro_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Micro-batch sizes that fit one process's (one GPU's) memory; Tensile picks one per world size."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.global_batch_size > 0, "global_batch_size",
                f"must be > 0, got {self.global_batch_size}")
        p.check(len(self.micro_batch_sizes) > 0, "micro_batch_sizes", "must list at least one size")
        p.check(all(m > 0 for m in self.micro_batch_sizes), "micro_batch_sizes",
                f"must all be > 0, got {self.micro_batch_sizes}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class ZeroConfig:
    stage: int = 0
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.stage in (0, 1, 2, 3), "stage", f"must be 0, 1, 2 or 3, got {self.stage}")
        p.raise_if_any()


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(kw_only=True, slots=True)
class PrecisionConfig:
    """`precision: bf16` is short for `precision: {dtype: bf16}`. docs/design/precision.md has
    the support table per ZeRO stage."""

    dtype: str = "fp32"
    """fp32, bf16 or fp16: the dtype of the model's weights, activations and gradients in forward
    and backward. The optimizer keeps fp32 master weights and fp32 Adam moments in every case
    (what checkpoints store), so a run resumes in another precision under ZeRO 1–3. fp16 scales
    its loss dynamically (the scaler's state is checkpointed) and needs a GPU."""
    accumulate_grads_in_fp32: bool = False
    """Accumulate bf16/fp16 gradients across micro-batches in fp32. Only ZeRO-3 honours it in
    DeepSpeed 0.19.8; other stages accumulate in `dtype` (refused otherwise, naming why)."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.dtype in PRECISIONS, "dtype", f"must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}")
        p.raise_if_any()

    @property
    def low_precision(self) -> bool:
        return self.dtype != "fp32"

    def refusal_for(self, zero_stage: int) -> str | None:
        """Why DeepSpeed 0.19.8 cannot train this precision at `zero_stage` the way Tensile
        checkpoints it, naming the alternative; None if it can."""
        if not (self.low_precision and self.accumulate_grads_in_fp32) or zero_stage == 3:
            return None
        why = {0: "DeepSpeed 0.19.8 has no optimizer for it without ZeRO (it raises NotImplementedError)",
               1: ("DeepSpeed 0.19.8 switches to its BF16_Optimizer, whose partitions Tensile's sharded "
                   "checkpoints do not read" if self.dtype == "bf16" else
                   "DeepSpeed 0.19.8's ZeRO-1 optimizer ignores it and accumulates in fp16"),
               2: f"DeepSpeed 0.19.8's ZeRO-2 optimizer ignores it and accumulates in {self.dtype}"}[zero_stage]
        return (f"{self.dtype} with fp32 gradient accumulation is not supported at ZeRO stage {zero_stage}: "
                f"{why}; set zero.stage to 3, or precision.accumulate_grads_in_fp32 to false")

    def refusal_on(self, device_type: str) -> str | None:
        """Why this precision cannot run on a worker whose device is of `device_type`, or None."""
        if self.dtype == "fp16" and device_type != "cuda":
            return (f"fp16 needs a CUDA GPU: this worker computes on the {device_type}, which has no fp16 "
                    f"kernels here; use bf16 (or fp32) on CPU workers")
        return None


@dataclass(kw_only=True, slots=True)
class ElasticConfig:
    min_nodes: int = contract.DEFAULT_MIN_NODES
    """Fewest nodes (pods: what Kueue admits and Karpenter buys) the job trains with; below it
    the job parks and waits. The old name `min_workers` is still read."""
    max_nodes: int = contract.DEFAULT_MAX_NODES
    """Most nodes the job uses; more wait as spares. The old name `max_workers` is still read."""
    processes_per_node: int = contract.DEFAULT_PROCESSES_PER_NODE
    """Worker processes on each node, one per GPU (torchrun's --nproc-per-node; the job renderer
    sets it to the pod's GPUs). The world size, which the batch is split over, is nodes × this."""
    collective_timeout_s: float = 15.0
    """A collective that waits this long fails: how fast a silently vanished peer is seen."""
    min_tier_mb_per_s: float = 10.0
    """The slowest rate (MB/s) at which a healthy node writes, reads or hashes checkpoint bytes
    on the shared tier. A phase over B bytes (round start, load, save) waits up to
    collective_timeout_s + B / this for a silent peer before taking it for lost."""
    step_watchdog_s: float = 60.0
    """A step (after the first) that takes this long, and three times the slowest step of its
    round, ends the worker as hung (steps grow when fewer workers share the global batch)."""
    startup_timeout_s: float = 600.0
    """A worker that has not finished its round's first step this long after starting (imports,
    process group, checkpoint load) ends as hung: a peer vanished while the group formed."""
    max_failures: int = 3
    """Real failures the run may spend; preemptions and membership changes spend none."""
    park_timeout_s: float = 86400.0
    """How long a node waits in rendezvous for enough workers before giving up."""
    keep_alive_interval_s: int = 5
    """Rendezvous heartbeat period; a node silent for interval × attempts is dropped."""
    keep_alive_max_attempts: int = 3
    """Missed heartbeats before the rendezvous drops a node. Shorter detection is safe only
    because checkpoints are fenced: a dropped node that comes back cannot publish."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.min_nodes >= 1, "min_nodes", f"must be >= 1, got {self.min_nodes}")
        p.check(self.max_nodes >= self.min_nodes, "max_nodes",
                f"must be >= min_nodes ({self.min_nodes}), got {self.max_nodes}")
        p.check(self.processes_per_node >= 1, "processes_per_node",
                f"must be >= 1 (one process per GPU), got {self.processes_per_node}")
        p.check(self.collective_timeout_s > 0, "collective_timeout_s",
                f"must be > 0, got {self.collective_timeout_s}")
        p.check(self.min_tier_mb_per_s > 0, "min_tier_mb_per_s",
                f"must be > 0, got {self.min_tier_mb_per_s}")
        p.check(self.step_watchdog_s > 0, "step_watchdog_s", f"must be > 0, got {self.step_watchdog_s}")
        p.check(self.startup_timeout_s > 0, "startup_timeout_s", f"must be > 0, got {self.startup_timeout_s}")
        p.check(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        p.check(self.park_timeout_s > 0, "park_timeout_s", f"must be > 0, got {self.park_timeout_s}")
        p.check(self.keep_alive_interval_s >= 1, "keep_alive_interval_s",
                f"must be >= 1 (whole seconds), got {self.keep_alive_interval_s}")
        p.check(self.keep_alive_max_attempts >= 1, "keep_alive_max_attempts",
                f"must be >= 1, got {self.keep_alive_max_attempts}")
        p.raise_if_any()

    def node_counts(self) -> range:
        """Every node count the job trains at."""
        return range(self.min_nodes, self.max_nodes + 1)

    def world_size(self, nodes: int) -> int:
        """Processes (ranks) in a group of this many nodes."""
        return nodes * self.processes_per_node

    @property
    def max_world_size(self) -> int:
        return self.world_size(self.max_nodes)


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    shared_dir: str = "shared"
    """The durable tier every node sees: a directory (a shared filesystem, EFS in a cluster) or
    an `s3://bucket/prefix` URL. Relative paths are resolved against the config file's directory.
    TENSILE_CHECKPOINT_URL overrides it (the job sets it per pod)."""
    ledger_dir: str = ""
    """The run's ledger (rounds, failures, status): a directory every node sees. Empty means
    shared_dir, which must then be a directory; an s3:// shared_dir needs one (EFS)."""
    local_dir: str = "local"
    """This node's own disk; it vanishes with the node. The launcher sets it per node."""
    every_steps: int = 10
    """Checkpoint every this many steps (and at the end, and when asked to stop)."""
    keep_last: int = 3
    """Committed checkpoints to keep on the shared tier (at least 2)."""
    asynchronous: bool = True
    """Periodic checkpoints of ZeRO 1–3 state block the loop only for a copy to host memory;
    writing, upload and publish run in the background (one at a time). Stop and final
    checkpoints always complete before the job exits."""
    persist_timeout_s: float = 600.0
    """How long rank 0 waits for every rank's files of a background checkpoint before giving
    that checkpoint up (the next one is tried as usual)."""

    @property
    def ledger_path(self) -> str:
        return self.ledger_dir or self.shared_dir

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.every_steps > 0, "every_steps", f"must be > 0, got {self.every_steps}")
        p.check(self.persist_timeout_s > 0, "persist_timeout_s", f"must be > 0, got {self.persist_timeout_s}")
        p.check(bool(self.ledger_dir) or "://" not in self.shared_dir, "ledger_dir",
                f"is needed when shared_dir is a URL ({self.shared_dir}): set it to a directory every node "
                f"mounts (EFS), where the run keeps its rounds, failures and status")
        p.check("://" not in self.ledger_dir, "ledger_dir",
                f"must be a directory (appends and exclusive creates), got {self.ledger_dir}")
        p.check(self.keep_last >= 2, "keep_last",
                f"must be >= 2 so a corrupt newest checkpoint leaves one to fall back to, got {self.keep_last}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class SignalsConfig:
    imds_enabled: bool = False
    """Watch the instance metadata service for spot notices. Pods reach it only when the
    node's IMDS hop limit is >= 2; off by default (SIGTERM from the node drain still works)."""
    imds_endpoint: str = "http://169.254.169.254"
    """Metadata service address; TENSILE_IMDS_ENDPOINT overrides it per node."""
    imds_poll_s: float = 1.0
    """Seconds between polls."""

    def __post_init__(self) -> None:
        p = _Problems()
        p.check(self.imds_endpoint.startswith("http://"), "imds_endpoint",
                f"must be an http:// address, got {self.imds_endpoint!r}")
        p.check(self.imds_poll_s > 0, "imds_poll_s", f"must be > 0, got {self.imds_poll_s}")
        p.raise_if_any()


@dataclass(kw_only=True, slots=True)
class TrainingConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def cross_checks(self) -> list[tuple[str, str]]:
        """Invariants between sections."""
        problems = []
        elastic, batch = self.elastic, self.batch
        if elastic.max_world_size > batch.global_batch_size:
            # The batch plan (tensile.batching.plan_batch) needs one sample per process at every
            # world size in range; the largest is the one to check.
            fixes = [f"raise batch.global_batch_size to {elastic.max_world_size}"]
            if (nodes := batch.global_batch_size // elastic.processes_per_node) >= elastic.min_nodes:
                fixes.insert(0, f"lower elastic.max_nodes to {nodes}")
            elif processes := batch.global_batch_size // elastic.max_nodes:
                fixes.insert(0, f"lower elastic.processes_per_node to {processes}")
            problems.append(("elastic.max_nodes",
                             f"{elastic.max_nodes} node(s) × {elastic.processes_per_node} process(es) per node "
                             f"= world size {elastic.max_world_size}, more than batch.global_batch_size "
                             f"({batch.global_batch_size}): every process needs at least one sample; "
                             + " or ".join(fixes)))
        if self.model.seq_len < 2:
            problems.append(("model.seq_len", f"must be >= 2, got {self.model.seq_len}"))
        refusal = self.precision.refusal_for(self.zero.stage)
        if refusal:
            problems.append(("precision.accumulate_grads_in_fp32", refusal))
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_hash(self) -> str:
        """Hash of the model's shape (dropout excluded): what a checkpoint must match. For a factory
        model that is the factory's path and its arguments (with vocab_size and seq_len)."""
        shape = {k: v for k, v in self.model.identity().items() if k not in ("dropout", "dropout_seed")}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def trajectory_hash(self) -> str:
        """Hash of everything that shapes the training trajectory (not paths, node or process counts).
        Precision is left out: a run may resume in another one (checkpoints record theirs and
        the checkpointer judges the change), and leaving it out keeps older runs' hashes."""
        d = self.to_dict()
        relevant = {k: d[k] for k in ("optimizer", "zero")}
        relevant["model"] = self.model.identity()
        relevant["seed"] = d["run"]["seed"]
        relevant["global_batch_size"] = d["batch"]["global_batch_size"]
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _type_problem(value: Any, annotation: Any) -> str | None:
    """Return why value does not fit the annotation, or None. Handles the types used above."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        non_none = [a for a in options if a is not type(None)]
        return _type_problem(value, non_none[0]) if len(non_none) == 1 else None
    if origin is list:
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
        (item,) = typing.get_args(annotation)
        for v in value:
            why = _type_problem(v, item)
            if why:
                return f"items {why}"
        return None
    if annotation is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                float(value)
                return None
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if annotation is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    return None


def _build(cls: type, data: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Build dataclass cls from a mapping, adding every problem (with its path) to problems."""
    prefix = f"{path}." if path else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append((path or "<top>", f"must be a mapping, got {data!r}"))
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            problems.append((f"{prefix}{key}", f"unknown key; known keys: {', '.join(sorted(known))}"))
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name in known & set(data):
        value, annotation = data[name], hints[name]
        nested = [a for a in (typing.get_args(annotation) or (annotation,)) if dataclasses.is_dataclass(a)]
        if nested and value is not None:
            kwargs[name] = _build(nested[0], value, f"{prefix}{name}", problems)
            continue
        why = _type_problem(value, annotation)
        if why:
            problems.append((f"{prefix}{name}", why))
        elif annotation is float or typing.get_args(annotation) == (float,):
            kwargs[name] = float(value) if not isinstance(value, list) else [float(v) for v in value]
        else:
            kwargs[name] = value
    if len(problems) > before:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        problems.extend((f"{prefix}{p}", m) for p, m in e.problems)
    except (TypeError, ValueError) as e:
        # ModelConfig raises plain ValueErrors that already name the field.
        problems.append((path or "<top>", str(e)))
    return None


def config_from_dict(data: Any, *, source: str | None = None,
                     notes: list[tuple[str, str]] | None = None) -> TrainingConfig:
    """Validate a parsed config mapping; raises ConfigError listing every problem. Deprecated
    keys it still reads are added to notes (property path, what to do), if given."""
    problems: list[tuple[str, str]] = []
    given_as: dict[str, str] = {}
    if isinstance(data, dict) and isinstance(data.get(contract.ELASTIC), dict):
        elastic, legacy_problems, legacy_notes = contract.adopt_legacy_node_keys(data[contract.ELASTIC])
        # A problem of a key read by its old name is reported at the name the file uses.
        given_as = {f"{contract.ELASTIC}.{new}": f"{contract.ELASTIC}.{old}"
                    for old, new in contract.LEGACY_NODE_KEYS.items()
                    if old in data[contract.ELASTIC] and new not in data[contract.ELASTIC]}
        data = {**data, contract.ELASTIC: elastic}
        problems.extend(legacy_problems)
        if notes is not None:
            notes.extend(legacy_notes)
    if isinstance(data, dict) and isinstance(data.get("precision"), str):  # `precision: bf16`
        data = {**data, "precision": {"dtype": data["precision"]}}
    config = _build(TrainingConfig, data, "", problems)
    if config is not None:
        problems.extend(config.cross_checks())
    problems = [(given_as.get(path, path), message) for path, message in problems]
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, *,
                notes: list[tuple[str, str]] | None = None) -> TrainingConfig:
    """Load a YAML config file. Relative data/checkpoint paths resolve against its directory.
    Deprecated keys it still reads are added to notes, if given."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError([("<file>", f"{path} does not exist; pass an existing config file")]) from e
    except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, a binary file
        raise ConfigError([("<file>", f"{path} cannot be read as a YAML text file: {e}")]) from e
    except yaml.YAMLError as e:
        raise ConfigError([("<file>", f"is not valid YAML: {e}")], str(path)) from e
    data = data or {}
    if os.environ.get(contract.ENV_CHECKPOINT_URL):  # the platform's name for the run's shared tier wins
        overrides = {"checkpoint.shared_dir": os.environ[contract.ENV_CHECKPOINT_URL], **(overrides or {})}
    if isinstance(data, dict):
        if isinstance(data.get("precision"), str):  # the shorthand, expanded so an override can land in it
            data["precision"] = {"dtype": data["precision"]}
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            if data.get(section) is None:  # missing, or an empty `section:` line
                data[section] = {}
            if isinstance(data[section], dict):  # anything else is reported by validation
                if section == contract.ELASTIC:  # an override wins over the file's key by either name
                    key = contract.LEGACY_NODE_KEYS.get(key, key)
                    for old, new in contract.LEGACY_NODE_KEYS.items():
                        if new == key:
                            data[section].pop(old, None)
                data[section][key] = value
    config = config_from_dict(data, source=str(path), notes=notes)
    base = path.resolve().parent
    config.data.url = _resolve(config.data.url, base)
    config.checkpoint.shared_dir = _resolve(config.checkpoint.shared_dir, base)
    config.checkpoint.local_dir = _resolve(config.checkpoint.local_dir, base)
    if config.checkpoint.ledger_dir:
        config.checkpoint.ledger_dir = _resolve(config.checkpoint.ledger_dir, base)
    if config.eval.url:
        config.eval.url = _resolve(config.eval.url, base)
    if config.run.tensorboard_dir:
        config.run.tensorboard_dir = _resolve(config.run.tensorboard_dir, base)
    return config


def _resolve(location: str, base: Path) -> str:
    if "://" in location or Path(location).is_absolute():
        return location
    return str(base / location)


def dump_config(config: TrainingConfig, path: str | Path) -> None:
    """Write a config back as YAML (used to hand a resolved config to workers)."""
    d = config.to_dict()
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
