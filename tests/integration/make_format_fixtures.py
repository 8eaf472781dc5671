"""Makes the checkpoints in tests/fixtures/format-v<N>/ (one folder per manifest format version:
format-v2, format-v3): a run's shared tier as the code of one commit wrote it, so later code is
tested against data it did not write.

Run only to add fixtures for a new format, never to refresh these: regenerating them with new
code would stop them testing old data. Each fixture is the shared tier of an uninterrupted
12-step tiny job cut back to its step-6 checkpoint (commit 1), with the losses that job then
logged for steps 7..12 (`expected.json`), which a resume from the fixture must reproduce.

    DS_ACCELERATOR=cpu .venv/bin/python tests/integration/make_format_fixtures.py tests/fixtures/format-v3
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_nodes, step_losses, write_job  # noqa: E402

from tensile.checkpoint import FORMAT_VERSION, DirectoryTier  # noqa: E402
from tensile.data import generate_corpus  # noqa: E402

CASES = {
    # ZeRO-2 in Tensile's sharded layout saved by 2 workers (a resume at 1 reshards it);
    # ZeRO-0 as DeepSpeed's own files.
    "zero2-sharded-2workers": ({"zero": {"stage": 2}}, ["node-a", "node-b"]),
    "zero0-deepspeed-1worker": ({"zero": {"stage": 0}}, ["node-a"]),
}
DATASET = {"num_samples": 600, "seq_len": 32, "seed": 3}
JOB = {"checkpoint": {"every_steps": 6, "keep_last": 2}}


def main(out: Path) -> None:
    if out.name != f"format-v{FORMAT_VERSION}":
        raise SystemExit(f"this code writes format version {FORMAT_VERSION}: its fixtures go in format-v{FORMAT_VERSION}, "
                         f"not {out.name}")
    work = Path(tempfile.mkdtemp(prefix="tensile-fixture-"))
    dataset = str(work / "corpus")
    generate_corpus(dataset, **DATASET)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    for name, (sections, nodes) in CASES.items():
        run_dir = work / name
        config = write_job(run_dir, dataset, **sections, **JOB)
        codes = run_nodes(run_dir, config, nodes)
        assert set(codes.values()) == {0}, codes
        shared = run_dir / "shared"
        tier = DirectoryTier(shared)
        first = tier.commit_log.read(1)
        assert first.step == 6, first
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        (target / "shared" / "commits").mkdir(parents=True)
        record = tier.commit_log._path(1)
        shutil.copy2(record, target / "shared" / "commits" / record.name)
        shutil.copytree(tier.checkpoint_dir(first.checkpoint_id),
                        target / "shared" / "checkpoints" / first.checkpoint_id)
        losses = step_losses(shared)
        (target / "expected.json").write_text(json.dumps({
            "made_by_commit": commit, "dataset": DATASET, "job": {**sections, **JOB},
            "resume_step": 6, "losses": {str(s): losses[s] for s in range(7, 13)}}, indent=1, sort_keys=True))
        print(f"{name}: {first.checkpoint_id} from commit {commit[:12]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
