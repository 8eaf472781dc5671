"""The process torchrun starts on every node: one round of training, then an exit code that
tells torchrun (restart or not) and Tensile's launcher (why) what happened.

It runs as a small guard around the real worker process, so a worker that dies without a
word (OOM kill, segfault) still spends the failure budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from tensile import contract

EXIT_COMPLETED = 0
EXIT_FAILURE = 1
EXIT_REGROUP = 75
"""Leaving for a membership change (stop agreed, peer lost, hang): torchrun restarts the
worker into a new round; Tensile spends no failure budget on it."""

log = logging.getLogger("tensile.worker")


def is_peer_loss(error: BaseException) -> bool:
    """Errors raised by a collective whose peer vanished, not by this worker's own code."""
    import torch.distributed as dist

    if isinstance(error, (dist.DistBackendError, dist.DistNetworkError, dist.DistStoreError)):
        return True
    text = str(error).lower()
    markers = ("gloo", "connection reset", "connection closed", "broken pipe", "timed out", "nccl")
    return isinstance(error, RuntimeError) and any(m in text for m in markers)


def write_node_outcome(local_dir: Path, outcome: str, detail: str = "", **fields: object) -> None:
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / "outcome.json").write_text(json.dumps({"outcome": outcome, "detail": detail, **fields}))


def round_marker(local_dir: Path, rank: str | int) -> Path:
    return local_dir / f"round.rank{rank}"


def leaving_marker(local_dir: Path) -> Path:
    """This node is going (an interruption notice, or its launcher was signalled): a worker that
    stops takes the node out of the rendezvous, not just its own round."""
    return local_dir / "leaving"


def agent_ended_marker(local_dir: Path) -> Path:
    """A leaving worker ended its agent: its launcher waits for the worker's outcome."""
    return local_dir / "agent-ended"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensile.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--guarded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return train(args.config) if args.guarded else guard(args.config)


def guard(config_path: str) -> int:
    """Run the worker as a child; record a failure if it dies other than by its own exit codes."""
    agent = os.getppid()
    child = subprocess.Popen([sys.executable, "-m", "tensile.worker", "--config", config_path, "--guarded"],
                             env={**os.environ, "TENSILE_AGENT_PID": str(agent)})

    def forward(signum: int, frame: object) -> None:
        # torchrun signals the whole process group; forwarding covers a signal sent to us alone.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    if code in (EXIT_COMPLETED, EXIT_FAILURE, EXIT_REGROUP):
        return code
    if code in (-signal.SIGTERM, -signal.SIGINT):
        return code  # asked to stop (torchrun restarting its workers) and did: not a failure
    if os.getppid() != agent:
        # The torchrun agent is gone too: the whole node is being torn down (reclaimed, or
        # ended by its launcher after a spot notice), which is not this worker's failure.
        return code
    from tensile.config import load_config
    from tensile.ledger import RunLedger

    config = load_config(config_path)
    ledger = RunLedger(config.checkpoint.ledger_path)
    rank = os.environ.get("RANK", "?")
    local_dir = Path(os.environ.get("TENSILE_LOCAL_DIR", config.checkpoint.local_dir))
    marker = round_marker(local_dir, rank)
    # A worker that died before its round began is keyed after the last round, so a crash
    # loop at start-up still spends the budget, once per attempt of the group.
    key = marker.read_text().strip() if marker.exists() else f"{ledger.last_round()}-before-start"
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    if ledger.record_failure(key, {"rank": rank, "error": f"worker {how}"}):
        ledger.record("failure", round=key, rank=rank, error=f"worker {how}")
    return EXIT_FAILURE


def train(config_path: str) -> int:
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '?')}] %(message)s")
    # Quiet DeepSpeed's per-call INFO lines; warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from tensile.signals import StopRequest, exit_now

    # Before the slow imports: torchrun may restart a worker that is still starting.
    stop = StopRequest()
    stop.install()

    import deepspeed
    import torch.distributed as dist

    from tensile.checkpoint import FencingError
    from tensile.config import ConfigError, load_config
    from tensile.data import DatasetError
    from tensile.ledger import RunLedger
    from tensile.metrics import TrainerMetrics
    from tensile.signals import CheckpointRequest, StepWatchdog
    from tensile.trainer import StopForMembership, Trainer

    if stop.requested:  # asked to stop while importing: nothing to save yet
        exit_now(EXIT_REGROUP)
    config = load_config(config_path)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ledger = RunLedger(config.checkpoint.ledger_path)

    def on_hang(silent_s: float) -> None:
        log.error("no progress for %.1f s: a peer is gone or hung; leaving to re-form", silent_s)
        ledger.record("hang", rank=rank, silent_s=round(silent_s, 2))
        exit_now(EXIT_REGROUP)

    watchdog = StepWatchdog(config.elastic.startup_timeout_s, on_hang).start()
    watchdog.beat()
    checkpoint_request = CheckpointRequest()
    metrics = TrainerMetrics(config.run.name)
    port = int(os.environ.get(contract.ENV_METRICS_PORT, config.run.metrics_port) or 0)
    if port and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        metrics.serve(port)
    local_dir = Path(os.environ.get("TENSILE_LOCAL_DIR", config.checkpoint.local_dir))
    if config.signals.imds_enabled:
        watch_spot_notices(config, stop, checkpoint_request, ledger, rank, local_dir)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(dist_backend="gloo" if not _has_cuda() else "nccl",
                               timeout=timedelta(seconds=config.elastic.collective_timeout_s),
                               verbose=False)
    round_start = None
    try:
        trainer = Trainer(config, rank=rank, world_size=world_size, local_dir=local_dir, stop=stop,
                          watchdog=watchdog, checkpoint_request=checkpoint_request, metrics=metrics)
        round_start = trainer.start_round()
        round_marker(local_dir, rank).parent.mkdir(parents=True, exist_ok=True)
        round_marker(local_dir, rank).write_text(str(round_start.round_number))
        if round_start.decision != "train":
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                write_node_outcome(local_dir, round_start.decision)
            return EXIT_COMPLETED
        if rank == 0:
            log.info("round %d: %s", round_start.round_number, trainer.plan.describe())
        trainer.build()
        trainer.train()
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            write_node_outcome(local_dir, "completed")
        dist.barrier()
        # Everything is durable; interpreter teardown of DeepSpeed and gloo only costs seconds.
        exit_now(EXIT_COMPLETED)
    except FencingError as e:
        log.error("fenced: %s", e)
        write_node_outcome(local_dir, "fenced", str(e))
        # Exit 0 so torchrun does not restart this stale group into another race.
        exit_now(EXIT_COMPLETED)
    except StopForMembership as e:
        log.info("%s", e)
        # This node is going (reclaimed, or its launcher was signalled), not just re-forming.
        leaving = stop.reason == SPOT_INTERRUPTION or leaving_marker(local_dir).exists()
        if leaving and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            left = leave_rendezvous_now(config, ledger, local_dir)
            # Written last: the launcher ends what is left of the node once it reads it.
            write_node_outcome(local_dir, "preempted" if stop.reason == SPOT_INTERRUPTION else "stopped",
                               str(e), left_rendezvous=left)
        exit_now(EXIT_REGROUP)
    except (DatasetError, ConfigError) as e:
        # No retry can fix these: end the run and say why, instead of spending the budget.
        log.error("cannot train: %s", e)
        ledger.write_status("failed", reason=str(e))
        write_node_outcome(local_dir, "failed", str(e))
        exit_now(EXIT_COMPLETED)
    except Exception as e:  # noqa: BLE001 - the exit code must classify every error
        if is_peer_loss(e):
            log.warning("a peer is gone (%s): leaving to re-form", str(e).splitlines()[0][:200])
            ledger.record("peer-lost", rank=rank, error=str(e).splitlines()[0][:200])
            exit_now(EXIT_REGROUP)
        key = round_start.round_number if round_start else f"{ledger.last_round()}-before-start"
        log.exception("training failed")
        if ledger.record_failure(key, {"rank": rank, "error": repr(e)[:500]}):
            ledger.record("failure", round=key, rank=rank, error=repr(e)[:500])
        exit_now(EXIT_FAILURE)
    return EXIT_FAILURE


SPOT_INTERRUPTION = "spot-interruption"


def leave_rendezvous_now(config, ledger, local_dir: Path) -> bool:
    """End this node's torchrun agent, then take its node out of the rendezvous, so the
    survivors re-form without waiting for its heartbeat to expire. Called after the stop's
    checkpoint is committed; torch is already imported here, unlike in the launcher.

    SIGKILL, not a clean shutdown (which closes the rendezvous for every node); killed first,
    so it cannot rejoin the next round when it sees this worker exit. On any failure the
    launcher tries again, and the heartbeat expiry remains the last resort."""
    import psutil

    from tensile.rdzv_leave import RendezvousLeaveError, leave_rendezvous

    agent_pid = int(os.environ.get("TENSILE_AGENT_PID", "0"))
    endpoint = os.environ.get("TENSILE_RDZV_ENDPOINT")
    if not agent_pid or not endpoint:
        return False
    began = time.monotonic()
    agent_ended_marker(local_dir).touch()
    try:
        agent = psutil.Process(agent_pid)
        agent.kill()
        # A zombie (until its launcher reaps it) can no longer write to the store.
        while agent.status() != psutil.STATUS_ZOMBIE and time.monotonic() - began < 5:
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    node = os.environ.get("TENSILE_NODE_ID", "?")
    try:
        result = leave_rendezvous(endpoint, config.run.name, agent_pid=agent_pid,
                                  local_addr=os.environ.get("TENSILE_RDZV_LOCAL_ADDR") or None,
                                  min_nodes=config.elastic.min_workers, max_nodes=config.elastic.max_workers)
    except RendezvousLeaveError as e:
        log.warning("%s", e)
        ledger.record("rendezvous-leave-failed", node=node, by="worker", error=str(e)[:300])
        return False
    ledger.record("rendezvous-leave", node=node, by="worker", removed=result.removed, round=result.round,
                  attempts=result.attempts, leave_s=round(time.monotonic() - began, 4))
    return True


def watch_spot_notices(config, stop, checkpoint_request, ledger, rank: int, local_dir: Path) -> None:
    from tensile.imds import SpotNoticeWatcher

    def on_interruption(notice: dict) -> None:
        log.warning("spot interruption notice %s: checkpointing and leaving", notice)
        stop.request(SPOT_INTERRUPTION)
        local_dir.mkdir(parents=True, exist_ok=True)
        leaving_marker(local_dir).touch()
        ledger.record("spot-notice", kind="interruption", rank=rank, notice=notice)

    def on_rebalance(notice: dict) -> None:
        log.info("rebalance recommendation %s: checkpointing now", notice)
        ledger.record("spot-notice", kind="rebalance", rank=rank, notice=notice)
        checkpoint_request.request("rebalance")

    endpoint = os.environ.get("TENSILE_IMDS_ENDPOINT", config.signals.imds_endpoint)
    SpotNoticeWatcher(endpoint, poll_s=config.signals.imds_poll_s, on_interruption=on_interruption,
                      on_rebalance=on_rebalance).start()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
