"""Did a peer leave, or did every peer stay: judged from the rendezvous state, by table."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _NodeDesc, _RendezvousState

from tensile.elastic.membership import (Judgement, MembershipWitness, RendezvousView, RoundMembers, judge,
                                        node_name)

ME, PEER, OTHER = "10.0.0.1:11", "10.0.0.2:22", "10.0.0.3:33"
MEMBERS = RoundMembers(round=4, nodes=(ME, PEER))
DIED_AT, EXPIRY_S, SKEW_S = 100.0, 3.0, 0.5


def view(*, round=4, participants=(ME, PEER), waiting=(), beats=None):
    return RendezvousView(round=round, participants=frozenset(participants), waiting=frozenset(waiting),
                          heartbeats={ME: 101.0, PEER: 101.0} if beats is None else beats)


@pytest.mark.parametrize("seen, now, expected", [
    # The peer heartbeat after the death (past the skew): it stayed; the death is this worker's.
    (view(beats={ME: 101.0, PEER: 100.9}), 101.0, Judgement.STAYED),
    # It re-joined the wait list (reacting to this worker's death) and heartbeat there: stayed.
    (view(participants=(ME,), waiting=(PEER,), beats={ME: 101.0, PEER: 101.2}), 101.5, Judgement.STAYED),
    # Not heartbeat since the death, not yet expired: not known yet.
    (view(beats={ME: 101.0, PEER: 99.0}), 101.0, Judgement.UNDECIDED),
    # Silent for longer than torch's expiry: it left.
    (view(beats={ME: 103.5, PEER: 99.0}), 103.5, Judgement.LEFT),
    # This node was dropped from the round (frozen, then resumed): the group re-formed without it.
    (view(participants=(PEER,), beats={PEER: 101.0}), 101.0, Judgement.LEFT),
    # The rendezvous moved on to another round.
    (view(round=5), 101.0, Judgement.LEFT),
])
def test_judge_tells_a_peer_that_left_from_one_that_stayed(seen, now, expected):
    assert judge(MEMBERS, seen, ME, since=DIED_AT, now=now, expiry_s=EXPIRY_S, skew_s=SKEW_S).judgement == expected


def test_judge_takes_a_peer_missing_from_two_views_for_gone():
    gone = view(participants=(ME,), beats={ME: 101.0})
    once = judge(MEMBERS, gone, ME, since=DIED_AT, now=101.0, expiry_s=EXPIRY_S, skew_s=SKEW_S)
    assert once.judgement == Judgement.UNDECIDED, "between an agent's exit and its re-join"
    twice = judge(MEMBERS, gone, ME, since=DIED_AT, now=101.3, expiry_s=EXPIRY_S, skew_s=SKEW_S,
                  absent=frozenset({PEER}))
    assert twice.judgement == Judgement.LEFT and PEER in twice.reason


def test_judge_sees_a_round_short_of_its_nodes_twice_as_a_peer_gone():
    # No list of the round's nodes (the worker died before writing it), and the dead peer is
    # already dropped from the state: the round's node count still shows it.
    alone = RoundMembers(4, (ME,))
    seen = view(participants=(ME,), beats={ME: 101.0})
    kwargs = dict(since=DIED_AT, now=101.0, expiry_s=EXPIRY_S, skew_s=SKEW_S, group_size=2)
    assert judge(alone, seen, ME, **kwargs).judgement == Judgement.UNDECIDED
    assert judge(alone, seen, ME, short_before=True, **kwargs).judgement == Judgement.LEFT


class Clock:
    def __init__(self, now: float):
        self.now = now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_witness_waits_until_a_silent_peer_expires():
    clock = Clock(DIED_AT)
    witness = MembershipWitness(lambda: view(beats={ME: clock.now, PEER: 99.0}), ME, MEMBERS, expiry_s=EXPIRY_S,
                                clock=lambda: clock.now, sleep=clock.sleep)
    verdict = witness.peer_left_since(DIED_AT)
    assert verdict.peer_left and DIED_AT + 2 <= clock.now <= DIED_AT + EXPIRY_S + 1


def test_witness_sees_a_peer_dropped_from_the_state_since_the_round_began():
    clock = Clock(DIED_AT)
    witness = MembershipWitness(lambda: view(participants=(ME,), beats={ME: clock.now}), ME,
                                RoundMembers(4, (ME, PEER, OTHER)), expiry_s=EXPIRY_S, clock=lambda: clock.now,
                                sleep=clock.sleep)
    assert witness.peer_left_since(DIED_AT).peer_left


def test_witness_without_a_readable_rendezvous_says_unknown():
    clock = Clock(DIED_AT)
    witness = MembershipWitness(lambda: None, ME, MEMBERS, expiry_s=EXPIRY_S, clock=lambda: clock.now,
                                sleep=clock.sleep)
    assert witness.peer_left_since(DIED_AT).judgement == Judgement.UNKNOWN


def test_view_from_torchs_rendezvous_state():
    state = _RendezvousState()
    me, peer, spare = _NodeDesc("10.0.0.1", 11, 0), _NodeDesc("10.0.0.2", 22, 0), _NodeDesc("10.0.0.3", 33, 0)
    state.round, state.participants, state.wait_list = 4, {me: 0, peer: 1}, {spare}
    state.last_heartbeats = {me: datetime.fromtimestamp(101.0, timezone.utc), peer: datetime.fromtimestamp(99.0, timezone.utc)}
    seen = RendezvousView.from_state(pickle.loads(pickle.dumps(state)))
    assert seen == RendezvousView(round=4, participants=frozenset({ME, PEER}), waiting=frozenset({OTHER}),
                                  heartbeats={ME: 101.0, PEER: 99.0})
    assert node_name("10.0.0.1", 11) == ME
    assert RoundMembers.from_json(MEMBERS.to_json()) == MEMBERS
