"""The control plane over a real TCPStore on loopback, one thread per rank: values agreed,
waits that follow what each rank announced, and a failing or silent rank seen as such."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import torch.distributed as dist

from tensile.elastic.control import ControlPlane, PeerFailed, PhaseTimeout, default_store


@pytest.fixture
def store_server():
    server = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=10), wait_for_workers=False)
    yield server


def planes(server, world_size: int, base_timeout_s: float = 0.3) -> list[ControlPlane]:
    def client():
        return dist.TCPStore("127.0.0.1", server.port, None, False, timedelta(seconds=10))

    return [ControlPlane(client(), rank=rank, world_size=world_size, base_timeout_s=base_timeout_s,
                         tier_bytes_per_s=1e6) for rank in range(world_size)]


def run_ranks(group: list[ControlPlane], work) -> list:
    with ThreadPoolExecutor(len(group)) as pool:
        futures = [pool.submit(work, plane) for plane in group]
        return [f.result() if f.exception() is None else f.exception() for f in futures]


def test_gather_broadcast_and_barrier_agree(store_server):
    def work(plane: ControlPlane):
        with plane.begin("save") as phase:
            gathered = phase.gather(plane.rank * 10)
            decided = phase.broadcast("published" if plane.rank == 0 else None)
            phase.barrier()
        with plane.begin("save") as again:  # the same name twice in a round: its own keys
            second = again.gather(-plane.rank)
        return gathered, decided, second

    results = run_ranks(planes(store_server, 3), work)
    assert results == [([0, 10, 20], "published", [0, -1, -2])] * 3


def test_a_rank_that_announced_a_long_part_is_waited_for(store_server):
    def work(plane: ControlPlane):
        with plane.begin("round-start", expected_s=3.0 if plane.rank == 0 else 0.0) as phase:
            if plane.rank == 0:
                time.sleep(1.5)  # five base timeouts, inside what it announced
            return phase.broadcast({"decision": "train"} if plane.rank == 0 else None)

    assert run_ranks(planes(store_server, 3), work) == [{"decision": "train"}] * 3


def test_a_rank_can_extend_what_it_announced_as_it_learns_the_bytes(store_server):
    def work(plane: ControlPlane):
        with plane.begin("round-start") as phase:
            if plane.rank == 0:
                phase.extend(plane.seconds_for(2_000_000))  # 2 s at 1 MB/s
                time.sleep(1.2)
            return phase.broadcast(7 if plane.rank == 0 else None)

    assert run_ranks(planes(store_server, 2), work) == [7, 7]


def test_a_rank_that_overruns_what_it_announced_is_taken_for_lost(store_server):
    def work(plane: ControlPlane):
        with plane.begin("save", expected_s=0.2) as phase:
            if plane.rank == 2:
                time.sleep(2.0)
            return phase.gather(plane.rank)

    started = time.monotonic()
    results = run_ranks(planes(store_server, 3), work)
    waited = time.monotonic() - started
    for rank in (0, 1):
        assert isinstance(results[rank], PhaseTimeout) and "rank(s) 2" in str(results[rank])
    assert waited < 2.5


def test_a_rank_that_fails_inside_a_phase_stops_the_others_at_once(store_server):
    def work(plane: ControlPlane):
        with plane.begin("load", expected_s=30.0) as phase:
            if plane.rank == 1:
                raise OSError("disk on fire")
            return phase.barrier()

    started = time.monotonic()
    results = run_ranks(planes(store_server, 3), work)
    assert time.monotonic() - started < 5, "not the 30 s the phase announced"
    assert isinstance(results[1], OSError)
    for rank in (0, 2):
        assert isinstance(results[rank], PeerFailed) and "rank 1 failed: OSError: disk on fire" in str(results[rank])


def test_torch_still_exposes_the_default_store_the_control_plane_uses():
    from torch.distributed import distributed_c10d

    assert callable(distributed_c10d._get_default_store)
    with pytest.raises(ValueError, match="not been initialized"):
        default_store()


def test_the_store_host_leaves_an_exchange_only_after_every_rank_has_read(store_server):
    # Rank 0's process serves the store: had it returned at once and exited (a stop agreed
    # after a save), a slower rank would have lost the store mid-read ("Broken pipe").
    returned_at = {}

    def work(plane: ControlPlane):
        with plane.begin("save") as phase:
            if plane.rank == 1:
                time.sleep(0.5)
            value = phase.broadcast("fenced?" if plane.rank == 0 else None)
            returned_at[plane.rank] = time.monotonic()
            return value

    started = time.monotonic()
    assert run_ranks(planes(store_server, 2, base_timeout_s=2.0), work) == ["fenced?"] * 2
    assert returned_at[0] - started >= 0.5
