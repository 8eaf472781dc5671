"""`tensile checkpoint`: rollback starts a branch and is kept by retention; export; verify; ls."""

from __future__ import annotations

import shutil

from harness import assert_bit_identical, checkpoint_tensors, final_weights, rounds, run_nodes, step_losses, write_job
from typer.testing import CliRunner

from tensile.checkpoint import Catalog, DirectoryTier
from tensile.cli import app
from tensile.elastic.ledger import RunLedger


def test_rollback_resumes_from_the_pin_on_a_new_branch(tmp_path, dataset, fixed_size_runs):
    original = fixed_size_runs[0]["uninterrupted"] / "shared"
    shutil.copytree(original, tmp_path / "shared")
    shared = tmp_path / "shared"
    tier = DirectoryTier(shared)
    pinned = next(r.checkpoint_id for r in Catalog(tier).committed() if r.step == 6)
    result = CliRunner().invoke(app, ["checkpoint", "rollback", str(shared), pinned])
    assert result.exit_code == 0, result.output
    (shared / "status.json").unlink()
    config = write_job(tmp_path, dataset)
    assert run_nodes(tmp_path, config, ["node-a", "node-b"]) == {"node-a": 0, "node-b": 0}

    restart = rounds(shared)[-1]
    assert restart["checkpoint"] == pinned and restart["resumed_step"] == 6
    newest = Catalog(tier).find_resume_point().manifest
    assert newest.step == 12 and newest.branch == pinned, "training after a rollback is a new branch"
    assert Catalog(tier).lineage(newest.checkpoint_id)[-1] in Catalog(tier).lineage(pinned)
    assert tier.read_manifest(pinned), "retention keeps the pinned checkpoint"
    old_twelve = [r.checkpoint_id for r in Catalog(tier).committed() if r.step == 12]
    assert len(old_twelve) == 2, "the original step 12 is not overwritten: both exist in the log"
    # Same worker count, same state at step 6: the branch replays the original steps exactly.
    assert {s: v for s, v in step_losses(shared).items() if s > 6} == \
        {s: v for s, v in step_losses(original).items() if s > 6}
    assert_bit_identical(checkpoint_tensors(original), checkpoint_tensors(shared))


def test_export_verify_and_ls(tmp_path, fixed_size_runs):
    from safetensors.torch import load_file

    runner = CliRunner()
    for stage in (0, 3):
        shared = fixed_size_runs[stage]["uninterrupted"] / "shared"
        out = tmp_path / f"stage{stage}.safetensors"
        result = runner.invoke(app, ["checkpoint", "export", str(shared), "--out", str(out)])
        assert result.exit_code == 0, result.output
        exported = load_file(str(out))
        expected = final_weights(fixed_size_runs[0]["uninterrupted"] / "shared")
        assert set(exported) >= {"token_embedding.weight", "output_head.weight"}, "tied names both present"
        for name, tensor in expected.items():  # ZeRO-3 consolidates to the same weights
            assert (exported[name] - tensor).abs().max() < 1e-5, name
    shared = fixed_size_runs[0]["uninterrupted"] / "shared"
    result = runner.invoke(app, ["checkpoint", "verify", str(shared)])
    assert result.exit_code == 0 and "resumes from step-00000012" in result.output, result.output
    result = runner.invoke(app, ["checkpoint", "ls", str(shared), "--verify"])
    assert result.exit_code == 0 and "valid" in result.output


def test_verify_fails_on_a_run_with_no_valid_checkpoint(tmp_path, fixed_size_runs):
    shared = tmp_path / "shared"
    shutil.copytree(fixed_size_runs[0]["uninterrupted"] / "shared", shared)
    for directory in (shared / "checkpoints").iterdir():
        for file in directory.rglob("*.pt"):
            file.write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["checkpoint", "verify", str(shared)])
    assert result.exit_code == 1
    assert RunLedger(shared).status()["state"] == "completed"  # verify changes nothing
