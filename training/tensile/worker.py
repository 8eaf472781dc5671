"""The process torchrun starts on every node: one round of training, then an exit code that
tells torchrun (restart or not) and Tensile's launcher (why) what happened.

It runs as a small guard around the real worker process, so a worker that dies without a
word (OOM kill, segfault) still spends the failure budget.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from tensile import contract
from tensile.elastic.api import NodeDirectory, NodeOutcome, RendezvousLeaveError, WorkerExit, rendezvous_id

log = logging.getLogger("tensile.worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerIdentity:
    """Who this worker process is: read once from what torchrun (RANK, WORLD_SIZE, LOCAL_RANK)
    and Tensile's launcher and guard (TENSILE_*) put in its environment."""

    rank: int
    world_size: int
    """Processes in the group, all nodes' together: nodes × processes_per_node."""
    local_rank: int
    processes_per_node: int = 1
    """torchrun's LOCAL_WORLD_SIZE: this node's worker processes."""
    nodes: int = 1
    """torchrun's GROUP_WORLD_SIZE: nodes (agents) in the group."""
    node_dir: NodeDirectory
    node_id: str
    """The node's name in logs and the ledger ("?" outside a launcher)."""
    agent_pid: int
    """This node's torchrun agent (0: unknown, so the worker cannot end it)."""
    rdzv_endpoint: str | None
    rdzv_local_addr: str | None
    """The address the agent names its node by; None: the host's FQDN."""

    @property
    def speaks_for_node(self) -> bool:
        """Local rank 0 writes the node's outcome and takes the node out of the rendezvous."""
        return self.local_rank == 0

    @classmethod
    def from_environment(cls, config, environ: Mapping[str, str] = os.environ) -> "WorkerIdentity":
        world_size = int(environ["WORLD_SIZE"])
        processes_per_node = int(environ.get("LOCAL_WORLD_SIZE", "1"))
        return cls(rank=int(environ["RANK"]), world_size=world_size,
                   local_rank=int(environ.get("LOCAL_RANK", "0")), processes_per_node=processes_per_node,
                   nodes=int(environ.get("GROUP_WORLD_SIZE", world_size // processes_per_node)),
                   node_dir=node_directory(config, environ),
                   node_id=environ.get("TENSILE_NODE_ID", "?"), agent_pid=int(environ.get("TENSILE_AGENT_PID", "0")),
                   rdzv_endpoint=environ.get("TENSILE_RDZV_ENDPOINT") or None,
                   rdzv_local_addr=environ.get("TENSILE_RDZV_LOCAL_ADDR") or None)


def node_directory(config, environ: Mapping[str, str] = os.environ) -> NodeDirectory:
    """The node's directory: the launcher's TENSILE_LOCAL_DIR, else the config's."""
    return NodeDirectory(environ.get("TENSILE_LOCAL_DIR", config.checkpoint.local_dir))


def membership_witness(config, me: WorkerIdentity, members=None):
    """What tells this worker whether a peer of its round left (tensile.elastic.membership);
    None outside a launcher, where there is no rendezvous to read."""
    if not me.rdzv_endpoint or not me.agent_pid:
        return None
    from tensile.elastic.membership import MembershipWitness, node_name
    from tensile.elastic.rendezvous import RendezvousReader, agent_address

    elastic = config.elastic
    return MembershipWitness(RendezvousReader(me.rdzv_endpoint, rendezvous_id(config.run.name)),
                             node_name(agent_address(me.rdzv_local_addr), me.agent_pid), members,
                             expiry_s=elastic.keep_alive_interval_s * elastic.keep_alive_max_attempts,
                             group_size=me.nodes)


def unknown_membership():
    from tensile.elastic.membership import Judgement, Verdict

    return Verdict(Judgement.UNKNOWN, "no rendezvous to read (not started by a launcher)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensile.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--guarded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return train(args.config) if args.guarded else guard(args.config)


def guard(config_path: str) -> int:
    """Run the worker as a child; record a failure if it dies other than by its own exit codes."""
    agent = os.getppid()
    if os.environ.get("TENSILE_LOCAL_DIR"):  # a launcher's node (only there is a rendezvous to judge by)
        # The worker writes its round's members; one left by an earlier round must not judge this one.
        NodeDirectory(os.environ["TENSILE_LOCAL_DIR"]).round_members_file(os.environ.get("RANK", "?")).unlink(
            missing_ok=True)
    child = subprocess.Popen([sys.executable, "-m", "tensile.worker", "--config", config_path, "--guarded"],
                             env={**os.environ, "TENSILE_AGENT_PID": str(agent)})

    def forward(signum: int, frame: object) -> None:
        # torchrun signals the whole process group; forwarding covers a signal sent to us alone.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    died_at = time.time()
    if code in (WorkerExit.COMPLETED, WorkerExit.FAILURE, WorkerExit.REGROUP):
        return code
    if code in (-signal.SIGTERM, -signal.SIGINT):
        return code  # asked to stop (torchrun restarting its workers) and did: not a failure
    if os.getppid() != agent:
        # The torchrun agent is gone too: the whole node is being torn down (reclaimed, or
        # ended by its launcher after a spot notice), which is not this worker's failure.
        return code
    from tensile.config import load_config
    from tensile.elastic.ledger import RunLedger
    from tensile.elastic.membership import RoundMembers

    config = load_config(config_path)
    ledger = RunLedger(config.checkpoint.ledger_path)
    rank = os.environ.get("RANK", "?")  # as text: recorded as it is, "?" if torchrun set none
    node_dir = node_directory(config)
    marker = node_dir.round_marker(rank)
    # A worker that died before its round began is keyed after the last round, so a crash
    # loop at start-up still spends the budget, once per attempt of the group.
    key = marker.read_text().strip() if marker.exists() else f"{ledger.last_round()}-before-start"
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    # NCCL tears a worker down with SIGABRT when a collective times out
    # (TORCH_NCCL_ASYNC_ERROR_HANDLING): a peer that vanished looks like a crash here. The
    # rendezvous tells them apart: the vanished peer stops heartbeating, a peer that merely
    # reacts to this worker's own crash does not.
    me = WorkerIdentity.from_environment(config, {**os.environ, "TENSILE_AGENT_PID": str(agent)})
    witness = membership_witness(config, me, RoundMembers.read(node_dir.round_members_file(rank))) \
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ else None
    verdict = witness.peer_left_since(died_at) if witness else unknown_membership()
    if verdict.peer_left:
        log.warning("worker %s, and a peer left (%s): re-forming", how, verdict.reason)
        ledger.record("peer-lost", round=key, rank=rank, error=f"worker {how}", why=verdict.reason)
        return WorkerExit.REGROUP
    if ledger.record_failure(key, {"rank": rank, "error": f"worker {how}"}):
        ledger.record("failure", round=key, rank=rank, error=f"worker {how}", why=verdict.reason)
    return WorkerExit.FAILURE


def train(config_path: str) -> int:
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '?')}] %(message)s")
    # Quiet DeepSpeed's per-call INFO lines; warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from tensile.elastic.signals import StopRequest, exit_now

    # Before the slow imports: torchrun may restart a worker that is still starting.
    stop = StopRequest()
    stop.install()

    import deepspeed
    import torch.distributed as dist

    from tensile.checkpoint import CheckpointIncompatible, FencingError
    from tensile.config import load_config
    from tensile.elastic.classify import Evidence, classify
    from tensile.elastic.control import ControlPlane, default_store
    from tensile.elastic.ledger import RunLedger
    from tensile.errors import NotRetryable
    from tensile.elastic.signals import CheckpointRequest, StepWatchdog
    from tensile.metrics import TrainerMetrics
    from tensile.trainer import StopForMembership, Trainer

    if stop.requested:  # asked to stop while importing: nothing to save yet
        exit_now(WorkerExit.REGROUP)
    config = load_config(config_path)
    me = WorkerIdentity.from_environment(config)
    rank, node_dir = me.rank, me.node_dir
    ledger = RunLedger(config.checkpoint.ledger_path)

    round_start = trainer = None

    def on_hang(silent_s: float) -> None:
        log.error("no progress for %.1f s: a peer is gone or hung; leaving to re-form", silent_s)
        ledger.record("hang", rank=rank, silent_s=round(silent_s, 2))
        if trainer is not None:  # the training thread is stuck; its background save is not
            trainer.settle_background_save()
        exit_now(WorkerExit.REGROUP)

    watchdog = StepWatchdog(config.elastic.startup_timeout_s, on_hang).start()
    watchdog.beat()
    checkpoint_request = CheckpointRequest()
    metrics = TrainerMetrics(config.run.name)
    metrics.group_shape(nodes=me.nodes, processes_per_node=me.processes_per_node)
    port = int(os.environ.get(contract.ENV_METRICS_PORT, config.run.metrics_port) or 0)
    if port and me.speaks_for_node:
        metrics.serve(port)
    if config.signals.imds_enabled:
        watch_spot_notices(config, stop, checkpoint_request, ledger, me)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    faults = fault_hooks_from_environment()
    witness = None
    try:
        placement = join_process_group(config, me)  # a node with fewer GPUs than processes: NotRetryable
        control = ControlPlane(default_store(), rank=rank, world_size=me.world_size,
                               base_timeout_s=config.elastic.collective_timeout_s,
                               tier_bytes_per_s=config.elastic.min_tier_mb_per_s * 1e6)
        witness = membership_witness(config, me, remember_round_members(config, me))
        trainer = Trainer(config, rank=rank, world_size=me.world_size, local_dir=node_dir.path, stop=stop,
                          watchdog=watchdog, checkpoint_request=checkpoint_request, metrics=metrics,
                          control=control, faults=faults, placement=placement)
        round_start = trainer.start_round()
        node_dir.round_marker(rank).parent.mkdir(parents=True, exist_ok=True)
        node_dir.round_marker(rank).write_text(str(round_start.round_number))
        if round_start.decision is not None:  # the node ends without training
            if me.speaks_for_node:
                node_dir.write_outcome(round_start.decision)
            return WorkerExit.COMPLETED
        if rank == 0:
            log.info("round %d: %s", round_start.round_number, trainer.plan.describe())
        trainer.build()
        trainer.train()
        if me.speaks_for_node:
            node_dir.write_outcome(NodeOutcome.COMPLETED)
        dist.barrier()
        # Everything is durable; interpreter teardown of DeepSpeed and gloo only costs seconds.
        exit_now(WorkerExit.COMPLETED)
    except FencingError as e:
        # A newer group began (epochs): this one is stale. Never exit 0 — torchrun would take it
        # for success and close the rendezvous for the live group too. Re-form instead (a stale
        # node that rejoins becomes part of the current group); a node fenced again and again
        # shares the run's tier with a group of another rendezvous, and leaves.
        log.error("fenced: %s", e)
        if not me.speaks_for_node:
            exit_now(WorkerExit.REGROUP)
        ledger.record("fenced", node=me.node_id, rank=rank, reason=str(e)[:300])
        times = sum(1 for event in ledger.events() if event["event"] == "fenced" and event.get("node") == me.node_id)
        if times >= MAX_FENCES_PER_NODE:
            left = leave_rendezvous_now(config, ledger, me)
            node_dir.write_outcome(NodeOutcome.FENCED, str(e), left_rendezvous=left, times=times)
        exit_now(WorkerExit.REGROUP)
    except StopForMembership as e:
        log.info("%s", e)
        # This node is going (reclaimed, or its launcher was signalled), not just re-forming.
        leaving = stop.reason == SPOT_INTERRUPTION or node_dir.leaving_marker.exists()
        if leaving and me.speaks_for_node:
            left = leave_rendezvous_now(config, ledger, me)
            # Written last: the launcher ends what is left of the node once it reads it.
            node_dir.write_outcome(NodeOutcome.PREEMPTED if stop.reason == SPOT_INTERRUPTION else NodeOutcome.STOPPED,
                                   str(e), left_rendezvous=left)
        exit_now(WorkerExit.REGROUP)
    except CheckpointIncompatible as e:
        # Found while loading (the saved parameters are not this model's): as final as the same
        # finding at round start, so the run ends with the reason and spends nothing.
        log.error("cannot resume: %s", e)
        if rank == 0:
            ledger.write_status(NodeOutcome.FAILED.value, reason=str(e))
            ledger.record("incompatible", reason=str(e))
        if me.speaks_for_node:
            node_dir.write_outcome(NodeOutcome.INCOMPATIBLE, str(e))
        exit_now(WorkerExit.COMPLETED)
    except NotRetryable as e:
        # No retry can fix these (a dataset, a config): end the run and say why, instead of
        # spending the budget.
        log.error("cannot train: %s", e)
        ledger.write_status(NodeOutcome.FAILED.value, reason=str(e))
        if me.speaks_for_node:  # the run's status is written by every rank that sees it
            node_dir.write_outcome(NodeOutcome.FAILED, str(e))
        exit_now(WorkerExit.COMPLETED)
    except Exception as e:  # noqa: BLE001 - the exit code must classify every error
        faults.on_error(e)
        since = time.time()
        key = round_start.round_number if round_start else f"{ledger.last_round()}-before-start"
        evidence = Evidence(failure_on_record=lambda wait_s: ledger.failure_on_record(key, wait_s=wait_s),
                            stop_agreed=bool(trainer and trainer.stop_agreed),
                            membership=lambda: witness.peer_left_since(since) if witness else unknown_membership(),
                            peer_failure_wait_s=witness.expiry_s + 2.0 if witness else 0.0)
        verdict = classify(e, evidence)
        if verdict.membership_change:
            log.warning("a peer is gone (%s; %s): leaving to re-form", str(e).splitlines()[0][:200], verdict.why)
            ledger.record("peer-lost", rank=rank, error=str(e).splitlines()[0][:200], why=verdict.why[:300])
            if trainer is not None:
                trainer.settle_background_save()
            exit_now(WorkerExit.REGROUP)
        log.exception("training failed (%s)", verdict.why)
        # Recorded first: a peer whose collective times out while this worker settles its save
        # finds the round's failure on record and spends nothing more.
        if ledger.record_failure(key, {"rank": rank, "error": repr(e)[:500]}):
            ledger.record("failure", round=key, rank=rank, error=repr(e)[:500], why=verdict.why[:300])
        if trainer is not None:
            trainer.settle_background_save()
        exit_now(WorkerExit.FAILURE)
    return WorkerExit.FAILURE


def remember_round_members(config, me: WorkerIdentity):
    """The rendezvous nodes of the round this worker starts in, kept for judging a later error
    (and written for its guard, which judges a death the same way); None without a launcher."""
    if not me.rdzv_endpoint:
        return None
    from tensile.elastic.membership import RoundMembers
    from tensile.elastic.rendezvous import RendezvousReader

    read = RendezvousReader(me.rdzv_endpoint, rendezvous_id(config.run.name))
    for _ in range(3):
        view = read()
        if view is not None:
            break
        time.sleep(0.2)
    else:
        log.warning("could not read the rendezvous: errors will be judged without this round's members")
        return None
    members = RoundMembers(view.round, tuple(sorted(view.participants)))
    me.node_dir.path.mkdir(parents=True, exist_ok=True)
    me.node_dir.round_members_file(me.rank).write_text(members.to_json())
    return members


SPOT_INTERRUPTION = "spot-interruption"
MAX_FENCES_PER_NODE = 3
"""Fences before a node stops re-forming and leaves the run with outcome `fenced` (exit 4)."""


def leave_rendezvous_now(config, ledger, me: WorkerIdentity) -> bool:
    """End this node's torchrun agent, then take its node out of the rendezvous, so the
    survivors re-form without waiting for its heartbeat to expire. Called after the stop's
    checkpoint is committed; torch is already imported here, unlike in the launcher.

    SIGKILL, not a clean shutdown (which closes the rendezvous for every node); killed first,
    so it cannot rejoin the next round when it sees this worker exit. On any failure the
    launcher tries again, and the heartbeat expiry remains the last resort."""
    import psutil

    from tensile.elastic.rendezvous import leave_and_record

    if not me.agent_pid or not me.rdzv_endpoint:
        return False
    began = time.monotonic()
    me.node_dir.agent_ended_marker.touch()
    try:
        agent = psutil.Process(me.agent_pid)
        agent.kill()
        # A zombie (until its launcher reaps it) can no longer write to the store.
        while agent.status() != psutil.STATUS_ZOMBIE and time.monotonic() - began < 5:
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    try:
        leave_and_record(config, ledger, endpoint=me.rdzv_endpoint, agent_pid=me.agent_pid,
                         local_addr=me.rdzv_local_addr, node=me.node_id, by="worker", began=began)
    except RendezvousLeaveError as e:
        log.warning("%s", e)
        return False
    return True


def watch_spot_notices(config, stop, checkpoint_request, ledger, me: WorkerIdentity) -> None:
    from tensile.elastic.imds import SpotNoticeWatcher

    def on_interruption(notice: dict) -> None:
        log.warning("spot interruption notice %s: checkpointing and leaving", notice)
        stop.request(SPOT_INTERRUPTION)
        me.node_dir.path.mkdir(parents=True, exist_ok=True)
        me.node_dir.leaving_marker.touch()
        ledger.record("spot-notice", kind="interruption", rank=me.rank, notice=notice)

    def on_rebalance(notice: dict) -> None:
        log.info("rebalance recommendation %s: checkpointing now", notice)
        ledger.record("spot-notice", kind="rebalance", rank=me.rank, notice=notice)
        checkpoint_request.request("rebalance")

    endpoint = os.environ.get("TENSILE_IMDS_ENDPOINT", config.signals.imds_endpoint)
    SpotNoticeWatcher(endpoint, poll_s=config.signals.imds_poll_s, on_interruption=on_interruption,
                      on_rebalance=on_rebalance).start()


def fault_hooks_from_environment():
    """Tensile's own failure tests arm faults through TENSILE_FAULTS* variables; without one the
    hooks do nothing and test code is never imported."""
    from tensile.fault_hooks import NO_FAULTS

    if not any(name.startswith("TENSILE_FAULT") for name in os.environ):
        return NO_FAULTS
    from tensile.testing.faults import EnvironmentFaults

    return EnvironmentFaults(os.environ)


def join_process_group(config, me: WorkerIdentity):
    """This process's device, made current before the default process group exists (so no
    collective ever runs on another GPU than LOCAL_RANK's), then the group on its backend."""
    import deepspeed

    from tensile.placement import Placement

    placement = Placement.of_this_process(me.local_rank)
    placement.activate()
    deepspeed.init_distributed(dist_backend=placement.backend,
                               timeout=timedelta(seconds=config.elastic.collective_timeout_s), verbose=False)
    return placement


if __name__ == "__main__":
    sys.exit(main())
