import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import SLOW_STEPS, run_nodes, write_job  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    from tensile.data import generate_corpus

    url = str(tmp_path_factory.mktemp("data") / "corpus")
    generate_corpus(url, num_samples=600, seq_len=32, seed=3)
    return url


@pytest.fixture(scope="session")
def fixed_size_runs(tmp_path_factory, dataset) -> dict[int, dict[str, Path]]:
    """Per ZeRO stage: an uninterrupted 2-node run, and a 2-node run that fails once at step 7
    and resumes at the same size. Each pair runs concurrently (one launch, many assertions)."""
    root = tmp_path_factory.mktemp("fixed")
    runs: dict[int, dict[str, Path]] = {}
    for stage in (0, 1, 2, 3):
        pair = {"uninterrupted": root / f"stage{stage}-uninterrupted",
                "interrupted": root / f"stage{stage}-interrupted"}
        jobs = []
        with ThreadPoolExecutor(2) as pool:
            for kind, run_dir in pair.items():
                config = write_job(run_dir, dataset, zero={"stage": stage})
                env = {"TENSILE_FAULTS": "raise@7"} if kind == "interrupted" else {}
                jobs.append(pool.submit(run_nodes, run_dir, config, ["node-a", "node-b"], env=env))
            codes = [job.result() for job in jobs]
        for kind_codes in codes:
            assert set(kind_codes.values()) == {0}, kind_codes
        runs[stage] = pair
    return runs
