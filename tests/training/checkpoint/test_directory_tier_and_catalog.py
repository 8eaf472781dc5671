import hashlib
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from tensile.checkpoint import (
    FORMAT_VERSION,
    LAYOUT_DEEPSPEED,
    LAYOUT_SHARDED,
    Catalog,
    CheckpointCorrupt,
    CommitLog,
    CommitRecord,
    DirectoryTier,
    FencingError,
    FileEntry,
    Manifest,
)
from tensile.checkpoint.catalog import checkpoint_id_for, step_of
from tensile.checkpoint.chunks import CHUNK_BYTES
from tensile.checkpoint.engine import incompatibility


def _manifest(checkpoint_id, files=(), step=10, **overrides):
    fields = dict(checkpoint_id=checkpoint_id, parent_id=None, step=step, world_size=2, zero_stage=0,
                  files=tuple(files), config_hash="c0ffee", data_version="d1", versions={"torch": "x"},
                  created_at=1.5, reason="periodic")
    return Manifest(**(fields | overrides))


def _save(tier: DirectoryTier, tmp_path: Path, step: int, token: str, *, payload: bytes | None = None) -> Manifest:
    """A complete checkpoint (files, then manifest) at `step`, not yet published."""
    checkpoint_id = checkpoint_id_for(step, token)
    source = tmp_path / f"src-{checkpoint_id}"
    source.write_bytes(payload if payload is not None else f"weights at {step}".encode() * 100)
    entries = [tier.put_file(checkpoint_id, "state/model.pt", source),
               tier.put_file(checkpoint_id, "sampler.json", source)]
    manifest = _manifest(checkpoint_id, entries, step=step)
    tier.write_manifest(manifest)
    return manifest


def _commit(tier: DirectoryTier, tmp_path: Path, seq: int, step: int, token: str = "a" * 32) -> Manifest:
    manifest = _save(tier, tmp_path, step, token)
    tier.commit_log.publish(CommitRecord(seq=seq, checkpoint_id=manifest.checkpoint_id, step=step,
                                         group_token=token))
    return manifest


def _record(seq, token="group-a", step=10):
    return CommitRecord(seq=seq, checkpoint_id=checkpoint_id_for(step, token), step=step, group_token=token)


# --- DirectoryTier: files and manifests ------------------------------------------------------------


def test_put_file_records_size_sha256_and_each_chunks_sha256(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    payload = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 1000)  # two chunks and a short third
    source = tmp_path / "model.pt"
    source.write_bytes(payload)

    entry = tier.put_file("ckpt", "state/model.pt", source)

    chunks = tuple(hashlib.sha256(payload[i:i + CHUNK_BYTES]).hexdigest() for i in range(0, len(payload), CHUNK_BYTES))
    assert len(chunks) == 3
    assert entry == FileEntry(path="state/model.pt", size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                              chunk_size=CHUNK_BYTES, chunks=chunks)
    assert (tier.checkpoint_dir("ckpt") / "state/model.pt").read_bytes() == payload
    assert not list(tier.checkpoint_dir("ckpt").rglob("*.partial"))


def test_put_file_empty_file(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    source = tmp_path / "empty"
    source.write_bytes(b"")

    assert tier.put_file("ckpt", "empty", source) == FileEntry("empty", 0, hashlib.sha256(b"").hexdigest(),
                                                               chunk_size=CHUNK_BYTES, chunks=())


def test_write_manifest_round_trips(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 30, "b" * 32)

    assert tier.read_manifest(manifest.checkpoint_id) == manifest
    assert not list(tier.checkpoint_dir(manifest.checkpoint_id).glob("*.partial"))


def test_read_manifest_missing_is_corrupt_naming_the_checkpoint(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    (tier.checkpoint_dir("step-00000010-abc") / "state").mkdir(parents=True)

    with pytest.raises(CheckpointCorrupt, match=r"step-00000010-abc: no manifest"):
        tier.read_manifest("step-00000010-abc")


@pytest.mark.parametrize("text", [
    "{not json",
    "",
    json.dumps({"format_version": FORMAT_VERSION}),  # no fields
    json.dumps({"format_version": FORMAT_VERSION, "files": [1, 2]}),
    "[1, 2]",
    "null",
], ids=["torn", "empty", "missing fields", "bad file entries", "a list", "null"])
def test_read_manifest_unreadable_is_corrupt_naming_the_checkpoint(tmp_path, text):
    tier = DirectoryTier(tmp_path / "shared")
    directory = tier.checkpoint_dir("ckpt-x")
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(text)

    with pytest.raises(CheckpointCorrupt, match=r"^ckpt-x: unreadable manifest"):
        tier.read_manifest("ckpt-x")


def test_read_manifest_unknown_format_version_is_corrupt_naming_the_checkpoint(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "c" * 32)
    path = tier.checkpoint_dir(manifest.checkpoint_id) / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))

    with pytest.raises(CheckpointCorrupt) as caught:
        tier.read_manifest(manifest.checkpoint_id)

    assert str(caught.value).startswith(f"{manifest.checkpoint_id}: ")
    assert f"format version {FORMAT_VERSION + 1}" in str(caught.value)


def test_read_manifest_naming_another_checkpoint_is_corrupt(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "c" * 32)
    moved = tier.checkpoint_dir("step-00000010-elsewhere")
    tier.checkpoint_dir(manifest.checkpoint_id).rename(moved)

    with pytest.raises(CheckpointCorrupt, match=f"manifest names {manifest.checkpoint_id}"):
        tier.read_manifest("step-00000010-elsewhere")


# --- DirectoryTier.verify ----------------------------------------------------------------------------


def test_verify_accepts_an_intact_checkpoint(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    tier.verify(_save(tier, tmp_path, 10, "d" * 32))


def test_verify_detects_a_truncated_file(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "d" * 32)
    path = tier.checkpoint_dir(manifest.checkpoint_id) / "state/model.pt"
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(CheckpointCorrupt, match=rf"{manifest.checkpoint_id}: state/model.pt has \d+ bytes"):
        tier.verify(manifest)


def test_verify_detects_a_bit_flip(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "d" * 32)
    path = tier.checkpoint_dir(manifest.checkpoint_id) / "sampler.json"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointCorrupt, match=rf"{manifest.checkpoint_id}: sampler.json fails its sha256"):
        tier.verify(manifest)


def test_verify_detects_a_missing_file(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "d" * 32)
    (tier.checkpoint_dir(manifest.checkpoint_id) / "state/model.pt").unlink()

    with pytest.raises(CheckpointCorrupt, match=rf"{manifest.checkpoint_id}: state/model.pt is missing"):
        tier.verify(manifest)


# --- CommitLog ---------------------------------------------------------------------------------------


def test_commit_log_publish_then_read(tmp_path):
    log = CommitLog(tmp_path / "commits")
    assert log.head() == 0

    log.publish(_record(1))
    log.publish(_record(2, step=20))

    assert log.head() == 2
    assert log.read(2) == _record(2, step=20)
    assert sorted(p.name for p in (tmp_path / "commits").iterdir()) == ["0000000001", "0000000002"]


def test_commit_log_publish_same_seq_twice_is_fenced_naming_the_winner(tmp_path):
    log = CommitLog(tmp_path / "commits")
    log.publish(_record(5, token="winner-token"))

    with pytest.raises(FencingError) as caught:
        log.publish(_record(5, token="loser-token"))

    message = str(caught.value)
    assert "commit 5" in message
    assert "group winner-token" in message and checkpoint_id_for(10, "winner-token") in message
    assert "loser-token" in message
    assert log.read(5).group_token == "winner-token"
    assert sorted(p.name for p in (tmp_path / "commits").iterdir()) == ["0000000005"]  # no temp left


def _race_to_publish(directory, token, barrier, results):
    barrier.wait()
    try:
        CommitLog(directory).publish(_record(7, token=token))
        results.put((token, "won"))
    except FencingError:
        results.put((token, "fenced"))


def test_commit_log_race_of_eight_processes_has_exactly_one_winner(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(8), context.Queue()
    tokens = [f"group-{i}" for i in range(8)]
    processes = [context.Process(target=_race_to_publish, args=(tmp_path / "commits", t, barrier, results))
                 for t in tokens]
    for p in processes:
        p.start()
    outcomes = dict(results.get(timeout=30) for _ in processes)
    for p in processes:
        p.join(timeout=30)

    winners = [t for t, outcome in outcomes.items() if outcome == "won"]
    assert sorted(outcomes) == sorted(tokens)
    assert len(winners) == 1
    assert CommitLog(tmp_path / "commits").read(7).group_token == winners[0]


def test_commit_log_records_are_never_seen_half_written(tmp_path):
    directory = tmp_path / "commits"
    directory.mkdir()
    log = CommitLog(directory)
    stop, seen, torn = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            for path in directory.iterdir():
                if not path.name.isdigit():
                    continue
                try:
                    text = path.read_text()
                except FileNotFoundError:
                    continue
                try:
                    CommitRecord.from_json(text)
                    seen.add(path.name)
                except ValueError:
                    torn.append(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for seq in range(1, 51):
            # A long token makes each write big enough to be caught half-done if it were in place.
            log.publish(CommitRecord(seq=seq, checkpoint_id=f"ckpt-{seq}", step=seq, group_token="t" * 20000))
    finally:
        stop.set()
        thread.join()

    assert torn == []
    assert seen  # the reader did look at records while they were being published
    assert len(log.sequence_numbers()) == 50


def test_commit_log_newest_first_reports_unreadable_records(tmp_path):
    log = CommitLog(tmp_path / "commits")
    log.publish(_record(1))
    (tmp_path / "commits" / "0000000002").write_text("{torn")
    (tmp_path / "commits" / "0000000003").write_text(json.dumps({"seq": 3}))

    entries = list(log.newest_first())

    assert [(seq, record is None) for seq, record, _ in entries] == [(3, True), (2, True), (1, False)]
    assert all("unreadable" in why for _, record, why in entries if record is None)


def _serve_listing_from(monkeypatch, directory: Path, stale: list[str]) -> None:
    """Make `os.listdir` of `directory` answer an older view, as an NFS client's directory cache can."""
    real = os.listdir

    def listdir(path="."):
        return list(stale) if Path(path) == directory else real(path)
    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(Path, "iterdir", lambda self: (self / name for name in listdir(self)))


@pytest.mark.parametrize("stale_count", [0, 2])
def test_commit_log_head_is_found_past_a_stale_listing(tmp_path, monkeypatch, stale_count):
    directory = tmp_path / "commits"
    log = CommitLog(directory)
    for seq in range(1, stale_count + 1):
        log.publish(_record(seq))
    stale = os.listdir(directory) if directory.exists() else []
    for seq in range(stale_count + 1, 6):
        log.publish(_record(seq, step=seq * 10))
    _serve_listing_from(monkeypatch, directory, stale)
    assert sorted(os.listdir(directory)) == sorted(stale)  # the listing really is stale

    assert log.head() == 5
    assert log.sequence_numbers() == [1, 2, 3, 4, 5]
    assert [seq for seq, _, _ in log.newest_first()] == [5, 4, 3, 2, 1]


def test_find_resume_point_resumes_the_newest_commit_behind_a_stale_listing(tmp_path, monkeypatch):
    tier = DirectoryTier(tmp_path / "shared")
    _commit(tier, tmp_path, seq=1, step=10)
    stale = os.listdir(tier.commit_log.directory)
    newest = _commit(tier, tmp_path, seq=2, step=20)
    _serve_listing_from(monkeypatch, tier.commit_log.directory, stale)

    point = Catalog(tier).find_resume_point()

    assert (point.next_seq, point.manifest.checkpoint_id, point.step) == (3, newest.checkpoint_id, 20)


def test_commit_log_a_retried_link_meeting_our_own_record_is_our_publish(tmp_path, monkeypatch):
    log = CommitLog(tmp_path / "commits")
    real_link = os.link

    def link_whose_reply_was_lost(src, dst):
        real_link(src, dst)  # the first attempt landed on the server...
        raise FileExistsError(17, "File exists", str(dst))  # ...and the retry met it
    monkeypatch.setattr(os, "link", link_whose_reply_was_lost)

    log.publish(_record(4, token="ours"))

    assert log.read(4) == _record(4, token="ours")
    assert sorted(os.listdir(tmp_path / "commits")) == ["0000000004"]  # no temp left
    with pytest.raises(FencingError, match="group ours"):
        log.publish(_record(4, token="rival"))  # a different record meeting it is still fenced


# --- Catalog.find_resume_point --------------------------------------------------------------------


def test_find_resume_point_empty_tier_starts_fresh(tmp_path):
    point = Catalog(DirectoryTier(tmp_path / "shared")).find_resume_point()

    assert (point.next_seq, point.record, point.manifest, point.step, point.skipped) == (1, None, None, 0, [])


def test_find_resume_point_picks_the_newest_valid_commit(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit(tier, tmp_path, 1, 10)
    newest = _commit(tier, tmp_path, 2, 20)

    point = Catalog(tier).find_resume_point()

    assert (point.next_seq, point.step, point.manifest, point.skipped) == (3, 20, newest, [])
    assert point.record.checkpoint_id == newest.checkpoint_id


def test_find_resume_point_skips_a_corrupt_newer_checkpoint_with_the_reason(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    _commit(tier, tmp_path, 1, 10)
    good = _commit(tier, tmp_path, 2, 20)
    corrupt = _commit(tier, tmp_path, 3, 30)
    path = tier.checkpoint_dir(corrupt.checkpoint_id) / "state/model.pt"
    path.write_bytes(b"X" + path.read_bytes()[1:])

    point = Catalog(tier).find_resume_point()

    assert point.manifest == good
    assert point.next_seq == 4  # head + 1 even though the head is corrupt
    assert len(point.skipped) == 1
    what, why = point.skipped[0]
    assert what == corrupt.checkpoint_id and "sha256" in why


def test_find_resume_point_skips_a_commit_whose_manifest_never_landed(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    good = _commit(tier, tmp_path, 1, 10)
    tier.commit_log.publish(_record(2, token="gone", step=20))

    point = Catalog(tier).find_resume_point()

    assert point.manifest == good
    assert point.skipped == [(checkpoint_id_for(20, "gone"), f"{checkpoint_id_for(20, 'gone')}: no manifest "
                                                               "(the save never finished)")]


def test_find_resume_point_skips_unreadable_commit_records(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    good = _commit(tier, tmp_path, 1, 10)
    (tier.commit_log.directory / "0000000002").write_text("{torn")

    point = Catalog(tier).find_resume_point()

    assert point.manifest == good
    assert point.next_seq == 3
    ((what, why),) = point.skipped
    assert what == "commit 2" and "unreadable" in why


def test_find_resume_point_nothing_valid_still_fences_past_the_head(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    only = _commit(tier, tmp_path, 1, 10)
    (tier.checkpoint_dir(only.checkpoint_id) / "sampler.json").unlink()

    point = Catalog(tier).find_resume_point()

    assert (point.next_seq, point.manifest, point.step) == (2, None, 0)
    assert [what for what, _ in point.skipped] == [only.checkpoint_id]


# --- Catalog.prune ----------------------------------------------------------------------------------


def test_prune_keeps_the_newest_committed_and_deletes_older_and_orphans(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    committed = [_commit(tier, tmp_path, seq, step).checkpoint_id
                 for seq, step in enumerate([10, 20, 30, 40], start=1)]
    orphan = _save(tier, tmp_path, 35, "f" * 32).checkpoint_id          # a fenced group's save
    same_step_orphan = _save(tier, tmp_path, 40, "e" * 32).checkpoint_id
    in_flight = _save(tier, tmp_path, 50, "9" * 32).checkpoint_id       # another group saving now
    (tier.checkpoints / "not-a-checkpoint").mkdir()

    deleted = Catalog(tier).prune(keep_last=2)

    assert sorted(deleted) == sorted([committed[0], committed[1], orphan, same_step_orphan])
    assert tier.list_checkpoint_ids() == sorted([committed[2], committed[3], in_flight, "not-a-checkpoint"])
    assert Catalog(tier).find_resume_point().manifest.checkpoint_id == committed[3]


def test_prune_with_no_commits_deletes_nothing(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    orphan = _save(tier, tmp_path, 10, "f" * 32).checkpoint_id

    assert Catalog(tier).prune(keep_last=2) == []
    assert tier.list_checkpoint_ids() == [orphan]


def test_prune_fewer_commits_than_keep_last_keeps_them_all(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    ids = [_commit(tier, tmp_path, 1, 10).checkpoint_id, _commit(tier, tmp_path, 2, 20).checkpoint_id]

    assert Catalog(tier).prune(keep_last=3) == []
    assert tier.list_checkpoint_ids() == ids


def test_checkpoint_id_for_round_trips_its_step():
    assert step_of(checkpoint_id_for(1234, "0123456789abcdef")) == 1234
    assert step_of("scratch") is None
    assert step_of("step-xx-abc") is None


# --- Rollback pins -------------------------------------------------------------------------------


def _commit_child(tier, tmp_path, seq, step, parent, branch, token):
    """A committed checkpoint whose manifest names its parent and branch."""
    manifest = _save(tier, tmp_path, step, token)
    manifest = _manifest(manifest.checkpoint_id, manifest.files, step=step, parent_id=parent, branch=branch)
    tier.write_manifest(manifest)
    tier.commit_log.publish(CommitRecord(seq=seq, checkpoint_id=manifest.checkpoint_id, step=step,
                                         group_token=token))
    return manifest


def test_catalog_pin_makes_an_older_checkpoint_the_resume_point_until_its_branch_moves_on(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    first = _commit_child(tier, tmp_path, 1, 10, None, "", "a" * 32)
    second = _commit_child(tier, tmp_path, 2, 20, first.checkpoint_id, "", "a" * 32)
    catalog = Catalog(tier)
    assert catalog.find_resume_point().manifest.checkpoint_id == second.checkpoint_id
    catalog.pin(first.checkpoint_id)
    point = catalog.find_resume_point()
    assert point.manifest.checkpoint_id == first.checkpoint_id and point.pinned == first.checkpoint_id
    assert point.next_seq == 3
    # Training after the rollback publishes on the pin's branch; that is the new resume point.
    branched = _commit_child(tier, tmp_path, 3, 20, first.checkpoint_id, first.checkpoint_id, "b" * 32)
    assert catalog.find_resume_point().manifest.checkpoint_id == branched.checkpoint_id
    assert branched.checkpoint_id != second.checkpoint_id, "the same step under another name"


def test_catalog_prune_never_deletes_the_pin_or_its_lineage(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    parent = None
    manifests = []
    for seq in range(1, 7):
        manifest = _commit_child(tier, tmp_path, seq, seq * 10, parent, "", "a" * 32)
        manifests.append(manifest)
        parent = manifest.checkpoint_id
    catalog = Catalog(tier)
    catalog.pin(manifests[2].checkpoint_id)  # step 30, whose lineage is steps 10 and 20
    deleted = catalog.prune(keep_last=2)
    kept = set(tier.list_checkpoint_ids())
    assert {m.checkpoint_id for m in manifests[:3]} <= kept
    assert manifests[3].checkpoint_id in deleted
    assert {m.checkpoint_id for m in manifests[4:]} <= kept


def test_catalog_pin_refuses_a_corrupt_checkpoint_and_a_broken_pin_is_reported(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    good = _commit_child(tier, tmp_path, 1, 10, None, "", "a" * 32)
    bad = _commit_child(tier, tmp_path, 2, 20, good.checkpoint_id, "", "a" * 32)
    _flip_a_byte(tier.checkpoint_dir(bad.checkpoint_id) / "sampler.json")
    catalog = Catalog(tier)
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        catalog.pin(bad.checkpoint_id)
    catalog.pin(good.checkpoint_id)
    _flip_a_byte(tier.checkpoint_dir(good.checkpoint_id) / "sampler.json")
    with pytest.raises(CheckpointCorrupt, match="pinned checkpoint"):
        catalog.find_resume_point()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_version_1_manifest_is_upgraded_in_memory_to_deepspeed_layout(tmp_path):
    tier = DirectoryTier(tmp_path / "shared")
    manifest = _save(tier, tmp_path, 10, "d" * 32)
    path = tier.checkpoint_dir(manifest.checkpoint_id) / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 1
    del data["layout"]  # version 1 had no layout field
    path.write_text(json.dumps(data))

    upgraded = tier.read_manifest(manifest.checkpoint_id)

    assert upgraded.format_version == 1 and upgraded.layout == LAYOUT_DEEPSPEED


@pytest.mark.parametrize(("layout", "world_size", "refused"), [
    (LAYOUT_DEEPSPEED, 3, True),   # DeepSpeed's universal loading of ZeRO-3 is not exact
    (LAYOUT_DEEPSPEED, 2, False),  # same size: DeepSpeed loads its own files
    (LAYOUT_SHARDED, 3, False),    # Tensile's layout loads at any size
])
def test_zero3_reshard_is_refused_only_for_deepspeeds_own_layout(layout, world_size, refused):
    manifest = _manifest("step-00000010-aaaaaaaa", zero_stage=3, world_size=2, layout=layout,
                         format_version=1 if layout == LAYOUT_DEEPSPEED else FORMAT_VERSION)
    problem = incompatibility(manifest, zero_stage=3, world_size=world_size, model_hash=manifest.model_hash)
    assert (problem is not None) == refused
    if refused:
        assert "step-00000010-aaaaaaaa" in problem and "resume at 2 workers once" in problem
