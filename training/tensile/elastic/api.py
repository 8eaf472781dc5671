"""The elastic runtime's values: how a node ended (and the exit codes that say it), the worker's
exit codes toward torchrun, the node directory the worker and its launcher share, and errors.

Everything here is written to disk or returned to a caller outside the process (`outcome.json`,
exit codes), so the values are a format: tests/training/elastic/test_api.py pins them.
"""

from __future__ import annotations

import json
import os
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from tensile import contract


def rendezvous_id(run_name: str) -> str:
    """The run's rendezvous id in the store: the platform's (TENSILE_RDZV_ID), else the run's name."""
    return os.environ.get(contract.ENV_RDZV_ID) or run_name


class NodeOutcome(StrEnum):
    """Why a node stopped, as its worker writes it to `outcome.json` and its launcher reports it.

    The run's ledger status uses the same words for its states (completed, failed)."""

    COMPLETED = "completed"
    """The run is done (this round trained to the last step, or it was done already)."""
    FAILED = "failed"
    """The run cannot go on (a dataset or config no retry can fix)."""
    BUDGET_EXHAUSTED = "budget-exhausted"
    """The run's failure budget (elastic.max_failures) is spent."""
    INCOMPATIBLE = "incompatible"
    """The resume point cannot be loaded by this job (another model, ZeRO stage or worker count)."""
    FENCED = "fenced"
    """Another worker group published a checkpoint first: this stale group stops."""
    STOPPED = "stopped"
    """Signalled (pod deletion, node drain); saved and left."""
    PREEMPTED = "preempted"
    """A spot interruption notice; saved and left."""

    @property
    def exit_code(self) -> int:
        """The launcher's (`tensile launch`) exit code for a node that ended this way."""
        return _LAUNCHER_EXIT_CODES[self]

    @classmethod
    def parse(cls, text: object) -> NodeOutcome | None:
        """The outcome named by text (read from outcome.json or the ledger status), or None."""
        try:
            return cls(text)
        except ValueError:
            return None


# The codes are the trainer's contract with the infra (the Job's podFailurePolicy reads them).
_LAUNCHER_EXIT_CODES = {NodeOutcome(name): code for name, code in contract.OUTCOME_EXIT_CODES.items()}
if set(_LAUNCHER_EXIT_CODES) != set(NodeOutcome):
    raise RuntimeError("tensile.contract.OUTCOME_EXIT_CODES must name every NodeOutcome")


class WorkerExit(IntEnum):
    """The worker's exit codes toward torchrun (`python -m tensile.worker`)."""

    COMPLETED = 0
    """Done for this round without a failure (also: fenced, or a failure that ends the run)."""
    FAILURE = 1
    """A real failure: it spent the failure budget; torchrun restarts the group."""
    REGROUP = 75
    """Leaving for a membership change (stop agreed, peer lost, hang): torchrun restarts the
    worker into a new round; Tensile spends no failure budget on it."""


class NodeDirectory:
    """A node's own directory (TENSILE_LOCAL_DIR): checkpoint staging, and the files by which
    its worker tells its launcher how the node ended."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def outcome_file(self) -> Path:
        return self.path / "outcome.json"

    @property
    def leaving_marker(self) -> Path:
        """This node is going (an interruption notice, or its launcher was signalled): a worker
        that stops takes the node out of the rendezvous, not just its own round."""
        return self.path / "leaving"

    @property
    def agent_ended_marker(self) -> Path:
        """A leaving worker ended its agent: its launcher waits for the worker's outcome."""
        return self.path / "agent-ended"

    def round_marker(self, rank: str | int) -> Path:
        """The round a rank is in, for its guard to key a failure by."""
        return self.path / f"round.rank{rank}"

    def round_members_file(self, rank: str | int) -> Path:
        """The rendezvous nodes of the round a rank trains in, for its guard to judge a death by."""
        return self.path / f"members.rank{rank}.json"

    def write_outcome(self, outcome: NodeOutcome, detail: str = "", **fields: object) -> None:
        """Written whole or not at all (a temporary of this process's own, renamed over it): the
        launcher polls the file, and a node's other processes may write their own word too."""
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.path / f".outcome.json.{os.getpid()}"
        partial.write_text(json.dumps({"outcome": outcome.value, "detail": detail, **fields}))
        os.replace(partial, self.outcome_file)

    def outcome_field(self, field: str = "outcome") -> Any:
        """A field of outcome.json; None while it is missing or half written."""
        try:
            return json.loads(self.outcome_file.read_text()).get(field)
        except (FileNotFoundError, ValueError, AttributeError):
            return None

    def clear(self) -> None:
        """Before a node starts: no outcome or marker of an earlier start is left."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (self.outcome_file, self.leaving_marker, self.agent_ended_marker):
            stale.unlink(missing_ok=True)


class RendezvousLeaveError(RuntimeError):
    """The node could not be taken out (store unreachable, state unreadable or always changing).
    The caller can ignore it: the node's heartbeat then expires as before."""
