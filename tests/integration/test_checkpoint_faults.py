"""Checkpoint faults: a crash mid-save, a corrupt newest checkpoint, a rival group, a spent budget."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import (SLOW_STEPS, Script, assert_bit_identical, at_step, checkpoint_tensors, rounds, run_nodes,
                     step_losses, write_job)

from tensile.checkpoint import Catalog, CommitRecord, DirectoryTier
from tensile.elastic.ledger import RunLedger


def test_crash_between_checkpoint_files_is_never_loaded(tmp_path, dataset):
    # ZeRO-1 on one worker writes two files; the process dies after the first of step 6's.
    config = write_job(tmp_path, dataset, zero={"stage": 1})
    codes = run_nodes(tmp_path, config, ["node-a"], env={"TENSILE_FAULTS": "crash-in-save@6"})
    assert codes == {"node-a": 0}
    starts = rounds(tmp_path / "shared")
    assert [r["resumed_step"] for r in starts] == [0, 3], "resumed from the checkpoint before the crash"
    tier = DirectoryTier(tmp_path / "shared")
    committed = {r.checkpoint_id for r in Catalog(tier).committed()}
    assert all(r["checkpoint"] in committed for r in starts if r["checkpoint"])
    ledger = RunLedger(tmp_path / "shared")
    assert ledger.status()["state"] == "completed"
    # The process died without a word (exit 137); its guard spent one failure for it.
    failures = [e for e in ledger.events() if e["event"] == "failure"]
    assert ledger.failures_spent() == 1 and "exited with code 137" in failures[0]["error"]


# make test falls back past a corrupt checkpoint in the corrupt-chunk test below.
@pytest.mark.parametrize("damage", [pytest.param("truncate", marks=pytest.mark.full),
                                    pytest.param("bit-flip", marks=pytest.mark.full)])
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, dataset, fixed_size_runs, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(fixed_size_runs[0]["uninterrupted"], run_dir,
                    ignore=shutil.ignore_patterns("logs", "nodes"))
    shared = run_dir / "shared"
    tier = DirectoryTier(shared)
    newest = Catalog(tier).find_resume_point().manifest
    target = tier.checkpoint_dir(newest.checkpoint_id) / newest.files[0].path
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    (shared / "status.json").unlink()
    config = write_job(run_dir, dataset)
    assert run_nodes(run_dir, config, ["node-a", "node-b"]) == {"node-a": 0, "node-b": 0}
    restart = rounds(shared)[-1]
    assert restart["resumed_step"] == 9, "the previous checkpoint"
    reason = "bytes" if damage == "truncate" else "sha256"
    assert any(newest.checkpoint_id in s and reason in s for s in restart["skipped"]), restart["skipped"]
    # Redoing steps 10-12 from step 9 lands on the same state as the original run.
    assert_bit_identical(checkpoint_tensors(fixed_size_runs[0]["uninterrupted"] / "shared"),
                         checkpoint_tensors(shared))


@pytest.mark.parametrize("workers", [3, pytest.param(2, marks=pytest.mark.full)], ids=["reshard-2-to-3", "same-size"])
def test_a_corrupt_chunk_found_while_loading_falls_back_to_the_previous_checkpoint(tmp_path, dataset,
                                                                                     fixed_size_runs, workers):
    # Version 3: the round start checks sizes only; the ranks that read the damaged chunk of rank
    # 1's shard find it as they load (at 3 workers, ranges of other ranks' files). These shards
    # are one chunk each and every rank reads every shard's header, so every rank finds it here;
    # a rank that read nothing damaged hearing of it by the agreement is test_chunks.py's.
    # Before chunk hashes, rank 0 hashed the whole files at round start.
    reference = fixed_size_runs[3]["uninterrupted"] / "shared"
    run_dir = tmp_path / "run"
    shutil.copytree(fixed_size_runs[3]["uninterrupted"], run_dir, ignore=shutil.ignore_patterns("logs", "nodes", "local"))
    shared = run_dir / "shared"
    tier = DirectoryTier(shared)
    newest = Catalog(tier).find_resume_point().manifest
    assert newest.step == 12 and newest.verified_on_read
    target = tier.checkpoint_dir(newest.checkpoint_id) / "shards/rank-00001.safetensors"
    data = bytearray(target.read_bytes())
    data[-len(data) // 3] ^= 0x01  # in the tensor bytes, past the header
    target.write_bytes(bytes(data))
    (shared / "status.json").unlink()
    # ZeRO-3: its fixed-size runs are made for `make test` anyway.
    config = write_job(run_dir, dataset, zero={"stage": 3})
    nodes = [f"node-{i}" for i in range(workers)]
    assert run_nodes(run_dir, config, nodes) == dict.fromkeys(nodes, 0)
    ledger = RunLedger(shared)
    starts = rounds(shared)
    original = len(rounds(reference))
    assert [r["resumed_step"] for r in starts[original:]] == [12, 9], "the corrupt one, then the one before"
    assert any(newest.checkpoint_id in s and "marked bad" in s for s in starts[-1]["skipped"]), starts[-1]["skipped"]
    found = [e for e in ledger.events() if e["event"] == "checkpoint-corrupt"]
    assert len(found) == 1 and found[0]["checkpoint"] == newest.checkpoint_id
    assert all("rank-00001.safetensors chunk 0" in f and "sha256" in f for f in found[0]["findings"]), found
    assert tier.bad_mark(newest.checkpoint_id) is not None
    assert ledger.failures_spent() == 0 and ledger.status()["state"] == "completed"
    losses, expected = step_losses(shared), step_losses(reference)
    for step in (10, 11, 12):
        assert abs(losses[step] - expected[step]) <= 1e-5 * expected[step], (step, losses[step], expected[step])


@pytest.mark.full  # make test fences through the stale group's late commit below
def test_rival_group_cannot_publish_and_stops(tmp_path, dataset):
    shared = tmp_path / "shared"
    configs = []
    for name in ("group-1", "group-2"):
        config = write_job(tmp_path / name, dataset)
        # Both groups point at one run: the same shared tier.
        config.write_text(config.read_text().replace(str(tmp_path / name / "shared"), str(shared)))
        configs.append((tmp_path / name, config))
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run_nodes, run_dir, config, [f"{run_dir.name}-node"], env=SLOW_STEPS)
                for run_dir, config in configs]
        codes = {}
        for job in jobs:
            codes.update(job.result())
    # Each group's round start claims a newer epoch, so the other's next publish is refused: it
    # re-forms (never exit 0 mid-run, which would close its rendezvous) and finds the run done,
    # or, fenced three times, leaves with outcome `fenced` (exit 4).
    assert sorted(codes.values()) in ([0, 0], [0, 4]), codes
    events = RunLedger(shared).events()
    fences = [e for e in events if e["event"] == "fenced"]
    assert fences and all("stale" in e["reason"] for e in fences), fences
    assert RunLedger(shared).status()["state"] == "completed" and RunLedger(shared).failures_spent() == 0
    # Every committed checkpoint is whole and from one group; the lineage is a single chain.
    tier = DirectoryTier(shared)
    records = Catalog(tier).committed()
    parent = None
    for record in records:
        assert record.checkpoint_id.endswith(record.group_token[:8])
        if (tier.checkpoint_dir(record.checkpoint_id) / "manifest.json").exists():  # not pruned
            manifest = tier.read_manifest(record.checkpoint_id)
            tier.verify(manifest)
            assert parent is None or manifest.parent_id == parent
        parent = record.checkpoint_id
    assert len({r.seq for r in records}) == len(records)


def test_spent_failure_budget_ends_the_run(tmp_path, dataset):
    config = write_job(tmp_path, dataset, elastic={"max_failures": 0})
    codes = run_nodes(tmp_path, config, ["node-a"], env={"TENSILE_FAULTS": "raise@4"})
    assert codes == {"node-a": 3}
    status = RunLedger(tmp_path / "shared").status()
    assert status["state"] == "failed" and "failure budget spent" in status["reason"]


def test_missing_dataset_ends_the_run_at_once_with_the_reason(tmp_path):
    config = write_job(tmp_path, str(tmp_path / "no-such-dataset"))
    assert run_nodes(tmp_path, config, ["node-a"]) == {"node-a": 3}
    status = RunLedger(tmp_path / "shared").status()
    assert status["state"] == "failed" and "no index.json" in status["reason"]
    assert RunLedger(tmp_path / "shared").failures_spent() == 0, "not retried"


def test_a_stale_groups_late_commit_never_fences_the_live_group(tmp_path, dataset):
    # A commit appears at the sequence number the live group will publish at next, as a stale
    # group's slow background publish would (a paused process, a stalled NFS link). Before
    # epochs, the live group was the one fenced: it exited 0 and torchrun closed the rendezvous.
    config = write_job(tmp_path, dataset, zero={"stage": 2})
    shared = tmp_path / "shared"

    def stale_publish(cluster) -> None:
        tier = DirectoryTier(shared)
        head = tier.commit_log.head()
        newest = tier.commit_log.read(head)
        tier.commit_log.publish(CommitRecord(seq=head + 1, checkpoint_id=newest.checkpoint_id, step=newest.step,
                                             group_token="5" * 32, epoch=0))

    codes = run_nodes(tmp_path, config, ["node-a", "node-b"], env=SLOW_STEPS,
                      driver=Script((at_step(4), stale_publish)))
    assert codes == {"node-a": 0, "node-b": 0}
    ledger = RunLedger(shared)
    assert ledger.status()["state"] == "completed"
    assert not [e for e in ledger.events() if e["event"] in ("fenced", "failure")]
    assert len(rounds(shared)) == 1, "no re-form"
    tokens = {r.group_token for r in Catalog(DirectoryTier(shared)).committed()}
    assert "5" * 32 not in tokens, "the stale commit is not part of the run's line"
