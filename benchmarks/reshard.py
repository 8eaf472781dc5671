"""Resharding ZeRO-2 state N → M workers: Tensile's sharded layout against DeepSpeed's universal
checkpoint path, and against the floor of moving the same bytes.

One checkpoint state (a ~19 M-parameter model after one step: fp32 master weights and two Adam
moments, ≥ 200 MB) is saved by N processes in both layouts. Then M fresh processes load it:
  tensile   = every rank's load_sharded (range reads of its own slices), slowest rank;
  universal = ds_to_universal (the offline conversion, one process) + the slowest rank's
              engine.load_checkpoint with load_universal;
  floor     = reading every byte of the checkpoint once, and a copy of it (read + write + fsync),
              which any conversion must at least do.
Peak memory: the highest RSS a rank reached while loading, above its RSS before the load
(sampled every 5 ms), next to the shard it owns (checkpoint bytes / M).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.multiprocessing as mp

MODEL = {"vocab_size": 256, "seq_len": 64, "d_model": 512, "n_layers": 6, "n_heads": 8, "dropout": 0.0,
         "frozen": ["position_embedding"]}
STAGE = 2
CASES = [(2, 1), (2, 3), (3, 2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRss:
    """Highest RSS of this process (and its children) while the block runs, above the start."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> "PeakRss":
        self.base = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.base)


def _engine(world_size: int, *, load_universal: bool = False) -> Any:
    import deepspeed

    from tensile.config import ModelConfig
    from tensile.model import build_model, parameter_groups

    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL))
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "train_batch_size": world_size, "zero_optimization": {"stage": STAGE},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1, "torch_adam": True}},
              "checkpoint": {"load_universal": load_universal}, "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model, weight_decay=0.1),
                                      config=config)
    return engine


def _worker(rank: int, world_size: int, port: int, task: str, root: str, results: Any) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "DS_ACCELERATOR": "cpu"})
    torch.set_num_threads(1)
    import deepspeed

    from tensile.checkpoint.ranges import DirectoryRanges
    from tensile.checkpoint.sharded.layout import META
    from tensile.checkpoint.sharded.restore import load_sharded
    from tensile.checkpoint.sharded.snapshot import save_sharded

    deepspeed.init_distributed(dist_backend="gloo")
    directory = Path(root)
    engine = _engine(world_size, load_universal=task == "universal")
    if task == "save":
        tokens = torch.randint(0, 256, (1, 65), generator=torch.Generator().manual_seed(rank))
        logits = engine(tokens[:, :-1])
        engine.backward(torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)))
        engine.step()
        save_sharded(engine, zero_stage=STAGE, directory=directory / "tensile", rank=rank,
                     world_size=world_size, client_state={})
        engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)
        results.put((rank, 0.0, 0))
        return
    torch.distributed.barrier()
    with PeakRss() as memory:
        started = time.monotonic()
        if task == "tensile":
            saved = int((directory / "saved_world_size").read_text())
            source = DirectoryRanges(directory / "tensile")
            load_sharded(engine, zero_stage=STAGE, source=source, saved_world_size=saved,
                         meta_size=(directory / "tensile" / META).stat().st_size, what="bench")
            source.close()
        else:
            engine.load_checkpoint(str(directory / "universal"), tag="state", load_optimizer_states=True,
                                   load_lr_scheduler_states=False)
        seconds = time.monotonic() - started
    results.put((rank, seconds, memory.peak))


def _spawn(world_size: int, task: str, root: Path) -> list[tuple[int, float, int]]:
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(_worker, args=(world_size, _free_port(), task, str(root), results), nprocs=world_size,
                       join=True, start_method="spawn")
    return [results.get() for _ in range(world_size)]


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _read_all(root: Path) -> float:
    started = time.monotonic()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass
    return time.monotonic() - started


def _copy_all(root: Path, target: Path) -> float:
    started = time.monotonic()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        out = target / path.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    return time.monotonic() - started


def _convert(root: Path) -> tuple[float, int]:
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = Namespace(input_folder=str(root / "deepspeed" / "state"), output_folder=str(root / "universal" / "state"),
                     num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                     inject_missing_state=True)
    with PeakRss() as memory:
        started = time.monotonic()
        ds_to_universal(args)
        seconds = time.monotonic() - started
    shutil.rmtree(root / "universal" / "state_tmp", ignore_errors=True)
    return seconds, memory.peak


def main() -> dict[str, float]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    workdir = Path(tempfile.mkdtemp(prefix="tensile-reshard-bench-"))
    print(f"Resharding ZeRO-{STAGE} state (model {MODEL['d_model']}×{MODEL['n_layers']} layers), this machine")
    figures: dict[str, float] = {}
    try:
        for saved in sorted({n for n, _ in CASES}):
            root = workdir / f"saved-{saved}"
            root.mkdir()
            (root / "saved_world_size").write_text(str(saved))
            _spawn(saved, "save", root)
            size = _tree_bytes(root / "tensile")
            print(f"  saved by {saved}: Tensile layout {size / 1e6:.0f} MB, DeepSpeed's "
                  f"{_tree_bytes(root / 'deepspeed') / 1e6:.0f} MB")
            read_s = statistics.median(_read_all(root / "tensile") for _ in range(3))
            copy_s = _copy_all(root / "tensile", workdir / f"copy-{saved}")
            shutil.rmtree(workdir / f"copy-{saved}")
            for n, m in [c for c in CASES if c[0] == saved]:
                tensile = _spawn(m, "tensile", root)
                convert_s, convert_rss = _convert(root)
                universal = _spawn(m, "universal", root)
                shutil.rmtree(root / "universal")
                t = max(s for _, s, _ in tensile)
                u = convert_s + max(s for _, s, _ in universal)
                t_rss = max(r for _, _, r in tensile)
                u_rss = max(convert_rss, max(r for _, _, r in universal))
                print(f"  {n} → {m}: tensile {t:5.2f} s | ds_to_universal {convert_s:5.2f} s + load_universal "
                      f"{u - convert_s:5.2f} s = {u:5.2f} s | speed-up {u / t:4.1f}x | floor read {read_s:4.2f} s "
                      f"(tensile {t / read_s:4.1f}x), read+write {copy_s:4.2f} s (tensile {t / copy_s:4.2f}x)")
                print(f"          peak RSS above start, per rank: tensile {t_rss / 1e6:5.0f} MB, universal "
                      f"{u_rss / 1e6:5.0f} MB (conversion {convert_rss / 1e6:.0f} MB); shard per rank "
                      f"{size / m / 1e6:.0f} MB")
                figures[f"{n}to{m}_speedup"] = u / t
                figures[f"{n}to{m}_peak_rss_mb"] = t_rss / 1e6
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
