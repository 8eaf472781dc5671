import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import run_nodes, write_job  # noqa: E402


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


class _FixedSizeRuns(dict):
    """Runs each stage's pair on first use, so `make test` pays only for the stages it tests."""

    def __init__(self, root: Path, dataset: str, precision: str = "fp32"):
        super().__init__()
        self.root, self.dataset, self.precision = root, dataset, precision

    def __missing__(self, stage: int) -> dict[str, Path]:
        self[stage] = _run_pair(self.root, self.dataset, stage, self.precision)
        return self[stage]


@pytest.fixture(scope="session")
def fixed_size_runs(tmp_path_factory, dataset) -> dict[int, dict[str, Path]]:
    """Per ZeRO stage: an uninterrupted 2-node run, and a 2-node run that fails once at step 7
    and resumes at the same size. Each pair runs concurrently (one launch, many assertions)."""
    return _FixedSizeRuns(tmp_path_factory.mktemp("fixed"), dataset)


@pytest.fixture(scope="session")
def bf16_fixed_size_runs(tmp_path_factory, dataset) -> dict[int, dict[str, Path]]:
    """The same pairs, trained in bf16."""
    return _FixedSizeRuns(tmp_path_factory.mktemp("fixed-bf16"), dataset, precision="bf16")


def _run_pair(root: Path, dataset: str, stage: int, precision: str = "fp32") -> dict[str, Path]:
    pair = {"uninterrupted": root / f"stage{stage}-uninterrupted",
            "interrupted": root / f"stage{stage}-interrupted"}
    with ThreadPoolExecutor(2) as pool:
        jobs = []
        for kind, run_dir in pair.items():
            config = write_job(run_dir, dataset, zero={"stage": stage}, precision={"dtype": precision})
            env = {"TENSILE_FAULTS": "raise@7"} if kind == "interrupted" else {}
            jobs.append(pool.submit(run_nodes, run_dir, config, ["node-a", "node-b"], env=env))
        for job in jobs:
            codes = job.result()
            assert set(codes.values()) == {0}, codes
    return pair
