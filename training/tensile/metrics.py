"""The trainer's Prometheus endpoint: step time, throughput, nodes and world size, restarts, preemptions,
checkpoint stall and persist times, the last durable step, the steps lost and the held-out loss;
and the optional TensorBoard scalars.

One endpoint per node (its local rank 0), on TENSILE_METRICS_PORT; off when unset or 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tensile.config import ConfigError


class TrainerMetrics:
    def __init__(self, run_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"run": run_name}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labelnames=list(labels), registry=self.registry).labels(**labels)

        self.step_seconds = gauge("tensile_step_seconds", "Wall time of the last optimizer step.")
        self.samples_per_second = gauge("tensile_samples_per_second", "Global samples per second, last step.")
        self.world_size = gauge("tensile_world_size",
                                "Processes (ranks) in the current group: nodes × processes per node.")
        self.nodes = gauge("tensile_nodes", "Nodes (pods) in the current group.")
        self.processes_per_node = gauge("tensile_processes_per_node", "Worker processes (GPUs) on each node.")
        self.step = gauge("tensile_step", "Optimizer steps completed.")
        self.restarts = gauge("tensile_restarts", "Group re-formations since the run began.")
        self.preemptions = gauge("tensile_preemptions", "Stops agreed on a signal or spot notice, run total.")
        self.steps_lost = gauge("tensile_steps_lost", "Steps redone after restarts, run total.")
        self.failures_spent = gauge("tensile_failures_spent", "Failure budget spent.")
        self.checkpoint_stall_seconds = gauge("tensile_checkpoint_stall_seconds",
                                              "Time the loop was blocked writing the last checkpoint locally.")
        self.checkpoint_persist_seconds = gauge("tensile_checkpoint_persist_seconds",
                                                "Time to make the last checkpoint durable on the shared tier.")
        self.last_durable_step = gauge("tensile_last_durable_step", "Step of the newest committed checkpoint.")
        self.checkpoint_bytes = gauge("tensile_checkpoint_bytes", "Size of the last checkpoint.")
        self.eval_loss = gauge("tensile_eval_loss", "Held-out loss of the last evaluation (eval.every_steps).")
        self.eval_step = gauge("tensile_eval_step", "Step after which the last held-out loss was computed.")
        self._checkpoints = Counter("tensile_checkpoints", "Checkpoints committed by this group.",
                                    labelnames=["run", "reason"], registry=self.registry)
        self._labels = labels

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def group_shape(self, *, nodes: int, processes_per_node: int) -> None:
        """How the group's processes sit on nodes (from torchrun, before the round starts)."""
        self.nodes.set(nodes)
        self.processes_per_node.set(processes_per_node)

    def round_started(self, *, world_size: int, restarts: int, preemptions: int, steps_lost: int,
                      failures_spent: int, resumed_step: int) -> None:
        self.world_size.set(world_size)
        self.restarts.set(restarts)
        self.preemptions.set(preemptions)
        self.steps_lost.set(steps_lost)
        self.failures_spent.set(failures_spent)
        self.step.set(resumed_step)
        self.last_durable_step.set(resumed_step)

    def step_done(self, *, step: int, seconds: float, samples: int) -> None:
        self.step.set(step)
        self.step_seconds.set(seconds)
        self.samples_per_second.set(samples / seconds if seconds > 0 else 0.0)

    def checkpoint_stalled(self, stall_s: float) -> None:
        """The loop was blocked this long by a checkpoint (a host copy, or the whole save)."""
        self.checkpoint_stall_seconds.set(stall_s)

    def evaluated(self, *, step: int, loss: float) -> None:
        self.eval_loss.set(loss)
        self.eval_step.set(step)

    def checkpoint_done(self, *, step: int, reason: str, persist_s: float, size: float) -> None:
        self.checkpoint_persist_seconds.set(persist_s)
        self.last_durable_step.set(step)
        self.checkpoint_bytes.set(size)
        self._checkpoints.labels(reason=reason, **self._labels).inc()


class TensorBoardScalars:
    """The same numbers as TensorBoard scalars (run.tensorboard_dir), for teams that look there:
    `loss/train` and `world_size` per step, `loss/eval` per evaluation. Rank 0 writes them; each
    round adds an event file to the directory, which TensorBoard reads as one run. tensorboardX,
    not torch.utils.tensorboard: see the `tensorboard` extra in training/pyproject.toml."""

    def __init__(self, directory: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ConfigError([("run.tensorboard_dir", f"needs the tensorboard package ({e}): install "
                                "'tensile-training[tensorboard]', or leave run.tensorboard_dir empty")]) from e
        self._writer = SummaryWriter(log_dir=directory)

    def step_done(self, *, step: int, loss: float, world_size: int) -> None:
        self._writer.add_scalar("loss/train", loss, step)
        self._writer.add_scalar("world_size", world_size, step)

    def evaluated(self, *, step: int, loss: float) -> None:
        self._writer.add_scalar("loss/eval", loss, step)

    def close(self) -> None:
        self._writer.close()


@dataclass(frozen=True, slots=True)
class RunHistory:
    """Restarts, preemptions and steps lost so far, as of `as_of` (a time on the ledger's clock).

    Kept with each round (the ledger's round summaries), so a round start reads only the events
    since the last summary instead of the whole run: a run of 100 rounds of 1 k steps would
    otherwise re-read 100 k events, and compare every round with every step, at each start."""

    restarts: int = 0
    preemptions: int = 0
    steps_lost: int = 0
    as_of: float | None = None
    """Every event up to this time is counted; None: none is (the run's beginning)."""

    def counts(self) -> dict[str, int]:
        return {"restarts": self.restarts, "preemptions": self.preemptions, "steps_lost": self.steps_lost}

    def to_json(self) -> dict[str, Any]:
        return {**self.counts(), "as_of": self.as_of}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunHistory":
        return cls(restarts=int(data["restarts"]), preemptions=int(data["preemptions"]),
                   steps_lost=int(data["steps_lost"]), as_of=data.get("as_of"))

    def advanced(self, events: list[dict], *, as_of: float) -> "RunHistory":
        """This history with `events` (time-ordered, all after `self.as_of`) counted, in one pass.

        A summary is taken at a round's start, before the round trains, so the first events
        counted here are that round's: it is the "previous round" of the first round start seen."""
        restarts, preemptions, lost = self.restarts, self.preemptions, self.steps_lost
        in_a_round = self.as_of is not None
        done = 0  # the furthest step of the round being read
        for event in events:
            kind = event["event"]
            if kind == "round-start":
                if in_a_round:
                    restarts += 1
                    lost += max(0, done - event["resumed_step"])
                in_a_round, done = True, 0
            elif kind == "step":
                done = max(done, event["step"])
            elif kind == "checkpoint" and event.get("reason") == "stop":
                preemptions += 1
        return RunHistory(restarts, preemptions, lost, as_of)


def run_history(events: list[dict]) -> dict[str, int]:
    """Restarts, preemptions and steps lost so far, from all of the run's ledger events."""
    return RunHistory().advanced(events, as_of=max((e["t"] for e in events), default=0.0)).counts()
