"""Checkpoint cost on the training loop, and write bandwidth against the disk's own.

One worker (world size 1, ZeRO-2) holding the reshard benchmark's model (≥ 200 MB of fp32
master weights and Adam moments) runs a few steps, then checkpoints through Tensile's real path
(EngineCheckpointer, a directory tier on the same disk):
  stall   = time the loop is blocked per checkpoint, as a fraction of one step:
            sync (write, fsync, copy to the tier, publish) vs async (copy to host memory only);
  write   = the shard written and fsynced to local disk, in MB/s, against
            `dd if=/dev/zero bs=16M conv=fsync` of the same byte count into the same directory;
  durable = an emergency (synchronous) save until its commit is published, on the directory tier
            and on S3 (moto's server on loopback: the protocol's cost, not AWS's bandwidth) —
            what must fit in torchrun's 30 s SIGTERM→SIGKILL window and the 2-minute spot notice.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks.reshard import MODEL, _engine, _free_port

REPEATS = 3


def _step(engine: Any, seed: int) -> None:
    tokens = torch.randint(0, MODEL["vocab_size"], (1, 65), generator=torch.Generator().manual_seed(seed))
    logits = engine(tokens[:, :-1])
    engine.backward(torch.nn.functional.cross_entropy(logits.reshape(-1, MODEL["vocab_size"]),
                                                      tokens[:, 1:].reshape(-1)))
    engine.step()


def _worker(rank: int, port: int, root: str, s3_url: str, results: Any) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"})
    import deepspeed

    from tensile.checkpoint import DirectoryTier, open_tier
    from tensile.checkpoint.engine import CheckpointIdentity, EngineCheckpointer, GroupLease
    from tensile.checkpoint.sharded.snapshot import snapshot_sharded

    class NoTrainerState:
        def state_dict(self) -> dict:
            return {}

    state, identity = NoTrainerState(), CheckpointIdentity(config_hash="bench", model_hash="", data_version="")
    from tensile.elastic.control import ControlPlane, default_store

    deepspeed.init_distributed(dist_backend="gloo")
    control = ControlPlane(default_store(), rank=0, world_size=1, base_timeout_s=60, tier_bytes_per_s=1e7)
    engine = _engine(1)
    directory = Path(root)
    step_s = []
    for i in range(REPEATS + 1):
        started = time.monotonic()
        _step(engine, i)
        step_s.append(time.monotonic() - started)
    checkpointer = EngineCheckpointer(tier=DirectoryTier(directory / "shared"), local_dir=directory / "local",
                                      rank=0, world_size=1, zero_stage=2, identity=identity, keep_last=2,
                                      control=control, lease=GroupLease(token="b" * 32, next_seq=1, parent_id=None))
    sync_stall, async_stall, durable, write_s = [], [], [], []
    for i in range(REPEATS):
        sync_stall.append(checkpointer.save(engine, state, step=10 + i, reason="bench").stall_s)
        started = time.monotonic()
        async_stall.append(checkpointer.save_async(engine, state, step=20 + i, reason="bench").stall_s)
        checkpointer.wait()
        durable.append(time.monotonic() - started)
        snapshot = snapshot_sharded(engine, zero_stage=2, rank=0, world_size=1, client_state={}, copy=False)
        target = directory / f"write-{i}"
        started = time.monotonic()
        snapshot.write(target)
        write_s.append(time.monotonic() - started)
        nbytes = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        shutil.rmtree(target)
    s3 = EngineCheckpointer(tier=open_tier(s3_url), local_dir=directory / "local-s3", rank=0, world_size=1,
                            zero_stage=2, identity=identity, keep_last=2, control=control,
                            lease=GroupLease(token="c" * 32, next_seq=1, parent_id=None))
    s3_durable = []
    for i in range(2):
        started = time.monotonic()
        s3.save(engine, state, step=30 + i, reason="stop")
        s3_durable.append(time.monotonic() - started)
    results.put({"s3_durable_s": statistics.median(s3_durable), "step_s": statistics.median(step_s[1:]), "sync_stall_s": statistics.median(sync_stall),
                 "async_stall_s": statistics.median(async_stall), "async_durable_s": statistics.median(durable),
                 "write_s": statistics.median(write_s), "bytes": nbytes})


def _dd(directory: Path, nbytes: int) -> float:
    target = directory / "dd.bin"
    blocks = max(1, round(nbytes / (16 << 20)))
    started = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={blocks}", "conv=fsync"],
                   check=True, capture_output=True)
    seconds = time.monotonic() - started
    written = target.stat().st_size
    target.unlink()
    return written / seconds


def main() -> dict[str, float]:
    import boto3
    from moto.server import ThreadedMotoServer

    workdir = Path(tempfile.mkdtemp(prefix="tensile-io-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    host, port = server.get_host_and_port()
    saved_env = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        context = mp.get_context("spawn")
        results = context.Queue()
        mp.start_processes(_worker, args=(_free_port(), str(workdir), "s3://bench/run", results), nprocs=1,
                           join=True, start_method="spawn")
        r = results.get()
        dd_bw = statistics.median(_dd(workdir, r["bytes"]) for _ in range(REPEATS))
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_bw = r["bytes"] / r["write_s"]
    print(f"Checkpoint cost, one worker, ZeRO-2, {r['bytes'] / 1e6:.0f} MB of state (median of {REPEATS}), this machine")
    print(f"  step time {r['step_s']:.2f} s | stall per checkpoint: sync {r['sync_stall_s']:.2f} s "
          f"({r['sync_stall_s'] / r['step_s']:.2f} of a step), async {r['async_stall_s']:.3f} s "
          f"({r['async_stall_s'] / r['step_s']:.3f} of a step) → {r['sync_stall_s'] / r['async_stall_s']:.0f}x less; "
          f"async durable after {r['async_durable_s']:.2f} s")
    print(f"  emergency save until published: directory tier {r['sync_stall_s']:.2f} s, S3 (moto, loopback) "
          f"{r['s3_durable_s']:.2f} s")
    print(f"  local write+fsync {write_bw / 1e6:.0f} MB/s vs dd conv=fsync {dd_bw / 1e6:.0f} MB/s: "
          f"ratio {write_bw / dd_bw:.2f}")
    return {"stall_ratio": r["sync_stall_s"] / r["async_stall_s"], "write_vs_dd": write_bw / dd_bw}


if __name__ == "__main__":
    main()
