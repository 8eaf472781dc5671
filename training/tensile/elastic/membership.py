"""Did a peer leave, or did every peer stay? Judged from torchrun's rendezvous state (who is in
the round, and each agent's heartbeat), never from an error's text.

A worker whose collective failed, or the guard of a worker that NCCL aborted (SIGABRT), asks it.
A peer that vanished (reclaimed, frozen, partitioned) stops heartbeating when it vanishes, before
the error it causes; a peer that merely reacts to this worker's own death keeps heartbeating (its
agent re-joins). So: a peer whose heartbeat is older than torch's own expiry, or who is gone from
the state, left; a peer that heartbeat after the error stayed. Heartbeats carry each agent's wall
clock, so "after" allows a skew.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


def node_name(addr: str, pid: int) -> str:
    """An agent's name in a view: its node descriptor's address and pid (torch's `local_id` is
    left out, as `rendezvous.remove_agent` leaves it out)."""
    return f"{addr}:{pid}"


@dataclass(frozen=True, slots=True)
class RendezvousView:
    """What the rendezvous state says of its nodes at one moment."""

    round: int
    participants: frozenset[str]
    waiting: frozenset[str] = frozenset()
    """Nodes in the wait list or the redundancy list: alive, waiting for the next round."""
    heartbeats: Mapping[str, float] = field(default_factory=dict)
    """Each node's last heartbeat, in seconds since the epoch (the agent's clock)."""

    @classmethod
    def from_state(cls, state: Any) -> "RendezvousView":
        """From torch's `_RendezvousState` (round, participants, wait_list, redundancy_list,
        last_heartbeats; torch 2.13, checked by tests/training/elastic/test_rendezvous.py)."""
        def names(nodes: Iterable[Any]) -> frozenset[str]:
            return frozenset(node_name(n.addr, n.pid) for n in nodes)

        return cls(round=state.round, participants=names(state.participants),
                   waiting=names(state.wait_list) | names(state.redundancy_list),
                   heartbeats={node_name(n.addr, n.pid): t.timestamp() for n, t in state.last_heartbeats.items()})


@dataclass(frozen=True, slots=True)
class RoundMembers:
    """The nodes of the round a worker trains in, taken when it started (so a peer the state has
    since dropped is still known to have been there)."""

    round: int
    nodes: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"round": self.round, "nodes": list(self.nodes)})

    @classmethod
    def from_json(cls, text: str) -> "RoundMembers":
        data = json.loads(text)
        return cls(round=int(data["round"]), nodes=tuple(data["nodes"]))

    @classmethod
    def read(cls, path: Path) -> "RoundMembers | None":
        try:
            return cls.from_json(path.read_text())
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


class Judgement(StrEnum):
    LEFT = "left"
    """A peer left or the group re-formed: a membership change."""
    STAYED = "stayed"
    """Every peer was alive after the error: the error is this worker's own."""
    UNDECIDED = "undecided"
    """Not yet known (a peer's heartbeat is neither fresh nor expired)."""
    UNKNOWN = "unknown"
    """The rendezvous could not be read (no launcher, or its store unreachable)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    judgement: Judgement
    reason: str = ""

    @property
    def peer_left(self) -> bool:
        return self.judgement == Judgement.LEFT


def judge(members: RoundMembers, view: RendezvousView, me: str, *, since: float, now: float,
          expiry_s: float, skew_s: float, absent: frozenset[str] = frozenset(), group_size: int = 0,
          short_before: bool = False) -> Verdict:
    """Did a peer of `members` leave, as of `view` read at `now`, for an error at `since`?

    `absent`: peers missing from the previous view too (missing from one view alone may be an
    agent between its exit and its re-join, two writes of its own). `group_size`: the nodes the
    round began with (torchrun's GROUP_WORLD_SIZE), which also sees a peer dropped from the state
    that `members` does not name; `short_before`: the previous view listed fewer nodes too."""
    listed = len(view.participants | view.waiting)
    if short_before and listed < group_size:
        return Verdict(Judgement.LEFT, f"the round began with {group_size} nodes, the rendezvous lists {listed}")
    if me not in view.participants:
        return Verdict(Judgement.LEFT, f"this node is no longer in the rendezvous round {members.round}: "
                                       f"the group re-formed without it")
    if view.round != members.round:
        return Verdict(Judgement.LEFT, f"the rendezvous moved from round {members.round} to {view.round}")
    undecided = [f"{group_size - listed} node(s) no longer listed"] if listed < group_size else []
    for peer in members.nodes:
        if peer == me:
            continue
        beat = view.heartbeats.get(peer)
        listed = peer in view.participants or peer in view.waiting
        if beat is None and not listed:
            if peer in absent:
                return Verdict(Judgement.LEFT, f"peer {peer} is gone from the rendezvous")
            undecided.append(peer)
        elif beat is not None and now - beat > expiry_s:
            return Verdict(Judgement.LEFT, f"peer {peer} has not heartbeat for {now - beat:.1f} s "
                                           f"(torch drops a node after {expiry_s:g} s)")
        elif beat is None or beat <= since + skew_s:
            undecided.append(peer)
    if undecided:
        return Verdict(Judgement.UNDECIDED, f"waiting for {', '.join(undecided)}")
    return Verdict(Judgement.STAYED, "every peer heartbeat after the error")


class MembershipWitness:
    """Answers "since time t, did a peer of this round leave?" by reading the rendezvous until the
    answer is known: at most torch's heartbeat expiry after t, when every peer has either
    heartbeat again or expired."""

    def __init__(self, read_view: Callable[[], RendezvousView | None], me: str, members: RoundMembers | None,
                 *, expiry_s: float, group_size: int = 0, skew_s: float = 0.5, poll_s: float = 0.25,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.read_view = read_view
        self.me = me
        self.members = members
        self.expiry_s = expiry_s
        self.group_size = group_size
        self.skew_s = skew_s
        self.poll_s = poll_s
        self.clock = clock
        self.sleep = sleep

    def peer_left_since(self, since: float) -> Verdict:
        deadline = since + self.expiry_s + self.skew_s + 2 * self.poll_s + 1.0
        absent: frozenset[str] = frozenset()
        short = False
        verdict = Verdict(Judgement.UNKNOWN, "the rendezvous could not be read")
        while True:
            view = self.read_view()
            now = self.clock()
            if view is not None:
                members = self.members or RoundMembers(view.round, tuple(sorted(view.participants)))
                verdict = judge(members, view, self.me, since=since, now=now, expiry_s=self.expiry_s,
                                skew_s=self.skew_s, absent=absent, group_size=self.group_size, short_before=short)
                if verdict.judgement != Judgement.UNDECIDED:
                    return verdict
                absent = frozenset(p for p in members.nodes
                                   if p not in view.heartbeats and p not in view.participants | view.waiting)
                short = len(view.participants | view.waiting) < self.group_size
            if now > deadline:
                # Past every peer's expiry: a view that still cannot decide was not read.
                return verdict if verdict.judgement == Judgement.UNKNOWN else Verdict(
                    Judgement.UNKNOWN, f"undecided after {now - since:.1f} s: {verdict.reason}")
            self.sleep(self.poll_s)
