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

# ---------------------------------------------------------------------------------------------
# Config sections and keys the job renderer reads or writes, and the defaults it assumes
# ---------------------------------------------------------------------------------------------

ELASTIC = "elastic"
MIN_WORKERS = "min_workers"
MAX_WORKERS = "max_workers"
DEFAULT_MIN_WORKERS = 1
DEFAULT_MAX_WORKERS = 4
CHECKPOINT = "checkpoint"
SHARED_DIR = "shared_dir"
LOCAL_DIR = "local_dir"
LEDGER_DIR = "ledger_dir"
DATA = "data"
URL = "url"
DEFAULT_DATA_URL = "data"
"""A relative data path resolves against the config file's directory; the renderer moves it under
the pod's work directory."""
RUN = "run"
NAME = "name"

RENDERED_KEYS = ((ELASTIC, MIN_WORKERS), (ELASTIC, MAX_WORKERS), (CHECKPOINT, SHARED_DIR), (CHECKPOINT, LOCAL_DIR),
                 (CHECKPOINT, LEDGER_DIR), (DATA, URL), (RUN, NAME))
"""Every (section, key) the renderer reads or writes: each must be a field of the trainer's config."""
