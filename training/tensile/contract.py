"""What the trainer and the infra agree on: exit codes, the `tensile launch` and `tensile
rdzv-store` flags, the TENSILE_* variables a pod may set, and the config keys and defaults the
job renderer (infra/plan/job.py) writes. Stdlib only, importable without torch: the infra
imports it, and the trainer takes these same values from here.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Exit codes of `tensile launch`, by the outcome the run's ledger records
# ---------------------------------------------------------------------------------------------

EXIT_COMPLETED = 0
EXIT_FAILED = 3
"""The failure budget is spent, or the run cannot go on (an incompatible checkpoint)."""
EXIT_FENCED = 4
"""Another group holds the run's lease: this one must not publish checkpoints."""
EXIT_STOPPED = 143
"""Stopped by a signal (pod deletion, node drain, spot notice) after saving: 128 + SIGTERM. The
job's podFailurePolicy ignores it: a preemption, not a failure."""

OUTCOME_EXIT_CODES: dict[str, int] = {
    "completed": EXIT_COMPLETED, "failed": EXIT_FAILED, "budget-exhausted": EXIT_FAILED,
    "incompatible": EXIT_FAILED, "fenced": EXIT_FENCED, "stopped": EXIT_STOPPED, "preempted": EXIT_STOPPED,
}

# ---------------------------------------------------------------------------------------------
# Commands and flags a pod runs
# ---------------------------------------------------------------------------------------------

LAUNCH_COMMAND = ("tensile", "launch")
LAUNCH_CONFIG = "--config"
"""The trainer's YAML config (the job mounts it at /etc/tensile/train.yaml)."""
LAUNCH_NODE_ID = "--node-id"
LAUNCH_LOCAL_DIR = "--local-dir"
"""This node's own disk for checkpoint staging."""
LAUNCH_RDZV_ENDPOINT = "--rdzv-endpoint"
"""host:port of the rendezvous store."""
LAUNCH_NPROC_PER_NODE = "--nproc-per-node"
DEFAULT_NPROC_PER_NODE = 1

RDZV_STORE_COMMAND = ("tensile", "rdzv-store")
RDZV_STORE_HOST = "--host"
RDZV_STORE_PORT = "--port"
DEFAULT_RDZV_STORE_HOST = "127.0.0.1"
DEFAULT_RDZV_PORT = 29400

# ---------------------------------------------------------------------------------------------
# Environment the job sets on every worker pod (the launcher's own variables for its workers,
# the image's TENSILE_CODE_VERSION and the test hooks are the trainer's business, not the contract)
# ---------------------------------------------------------------------------------------------

ENV_METRICS_PORT = "TENSILE_METRICS_PORT"
"""Overrides run.metrics_port: where each node's first worker serves Prometheus metrics."""
ENV_CHECKPOINT_URL = "TENSILE_CHECKPOINT_URL"
"""Overrides checkpoint.shared_dir: the run's shared tier (s3://bucket/teams/<team>/runs/<job>)."""
ENV_RDZV_ID = "TENSILE_RDZV_ID"
"""The rendezvous' id in the store (default: run.name). A scheduled run's Job sets its own name:
each run then joins a rendezvous of its own in the one store, never one a finished run closed."""

# ---------------------------------------------------------------------------------------------
# Config sections and keys the job renderer reads or writes, and the defaults it assumes
# ---------------------------------------------------------------------------------------------

ELASTIC = "elastic"
MIN_NODES = "min_nodes"
MAX_NODES = "max_nodes"
PROCESSES_PER_NODE = "processes_per_node"
"""Nodes are pods (what Kueue admits and Karpenter buys); each runs this many worker processes,
one per GPU. The world size (ranks, the batch split) is nodes × processes per node."""
DEFAULT_MIN_NODES = 1
DEFAULT_MAX_NODES = 4
DEFAULT_PROCESSES_PER_NODE = DEFAULT_NPROC_PER_NODE
LEGACY_NODE_KEYS = {"min_workers": MIN_NODES, "max_workers": MAX_NODES}
"""Old names of the node bounds, still read: they always counted nodes (torchrun's --nnodes, the
Job's parallelism), though the batch split counted processes."""


def adopt_legacy_node_keys(elastic: dict) -> tuple[dict, list[tuple[str, str]], list[tuple[str, str]]]:
    """The elastic section with `min_workers`/`max_workers` read as `min_nodes`/`max_nodes`.

    Returns (section, problems, notes): a problem where an old and a new name are both given
    with different values, a note (rename it) for each old name used. The caller's mapping is
    not modified."""
    section = dict(elastic)
    problems: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    for old, new in LEGACY_NODE_KEYS.items():
        if old not in section:
            continue
        value = section.pop(old)
        if new in section and section[new] != value:
            problems.append((f"{ELASTIC}.{old}", f"is the old name of {ELASTIC}.{new}, which is also given with "
                                                 f"another value ({value!r} vs {section[new]!r}): remove {old}"))
            continue
        section[new] = value
        notes.append((f"{ELASTIC}.{old}", f"is deprecated: it counts nodes; rename it to {new}"))
    return section, problems, notes
CHECKPOINT = "checkpoint"
SHARED_DIR = "shared_dir"
LOCAL_DIR = "local_dir"
LEDGER_DIR = "ledger_dir"
DATA = "data"
URL = "url"
DEFAULT_DATA_URL = "data"
"""A relative data path resolves against the config file's directory; the renderer moves it under
the pod's work directory."""
HELD_OUT_DIRECTORY = "heldout"
"""A dataset's evaluation split, a dataset of its own beside it: `tensile data prepare --held-out` and a
generated corpus with data.generate.held_out_samples write it; eval.url defaults to it."""
RUN = "run"
NAME = "name"

BATCH = "batch"
GLOBAL_BATCH_SIZE = "global_batch_size"
DEFAULT_GLOBAL_BATCH_SIZE = 16

RENDERED_KEYS = ((ELASTIC, MIN_NODES), (ELASTIC, MAX_NODES), (ELASTIC, PROCESSES_PER_NODE), (BATCH, GLOBAL_BATCH_SIZE),
                 (CHECKPOINT, SHARED_DIR), (CHECKPOINT, LOCAL_DIR), (CHECKPOINT, LEDGER_DIR), (DATA, URL), (RUN, NAME))
"""Every (section, key) the renderer reads or writes: each must be a field of the trainer's config."""
