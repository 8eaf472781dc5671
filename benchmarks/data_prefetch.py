"""Reading training data from S3 (moto's server on loopback: the protocol's cost, not AWS's):

  overlap   = the share of read time the prefetching reader hides behind a step's compute, when
              compute (a sleep as long as one step's read) and the next step's read run together:
              1 - (training-thread wait with prefetch) / (wait without);
  coalesce  = a sequential pass (an evaluation over the held-out split reads in order) with
              adjacent samples in one ranged GET, against one GET per sample, as a time ratio.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = 12
GLOBAL_BATCH = 64
SEQ_LEN = 1024


def _dataset(directory: Path) -> None:
    from tensile.data import TokenShardWriter

    rng = np.random.default_rng(0)
    with TokenShardWriter(str(directory), seq_len=SEQ_LEN, vocab_size=50_000, samples_per_shard=512,
                          loss_mask=True) as writer:
        for _ in range(2048):
            writer.write(rng.integers(0, 50_000, SEQ_LEN + 1), rng.random(SEQ_LEN + 1) < 0.9)


def _waits(url: str, compute_s: float, *, depth: int) -> float:
    from tensile.data import GlobalSampler, PrefetchingReader, StepRequest, TokenDataset

    dataset = TokenDataset(url)
    sampler = GlobalSampler(dataset.num_samples, GLOBAL_BATCH, seed=0)
    requests = [StepRequest(step, ids := sampler.sample_ids_for_step(step), [ids[:32], ids[32:]])
                for step in range(STEPS)]
    reader = PrefetchingReader(dataset, depth=depth)
    try:
        for step, request in enumerate(requests):
            reader.read(request)
            if step + 1 < STEPS:
                reader.prefetch(requests[step + 1])
            time.sleep(compute_s)  # the step's forward and backward
    finally:
        reader.close()
    return reader.waited_s


def _sequential_s(url: str, *, coalesced: bool) -> float:
    from tensile.data import TokenDataset

    dataset = TokenDataset(url)
    if not coalesced:
        dataset.store.max_request_bytes = 1  # one sample a request
    started = time.monotonic()
    for first in range(0, 1024, 64):
        dataset.read_batch(range(first, first + 64))
    return time.monotonic() - started


def main() -> dict[str, float]:
    import boto3
    from moto.server import ThreadedMotoServer

    workdir = Path(tempfile.mkdtemp(prefix="tensile-data-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, port = server.get_host_and_port()
    saved_env = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        _dataset(workdir / "ds")
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for path in sorted((workdir / "ds").iterdir()):
            client.upload_file(str(path), "bench", f"ds/{path.name}")
        url = "s3://bench/ds"
        # Compute as long as a read: the case where prefetch can at best halve a step.
        read_s = statistics.median(_waits(url, 0.0, depth=0) / STEPS for _ in range(2))
        without = statistics.median(_waits(url, read_s, depth=0) for _ in range(3))
        with_prefetch = statistics.median(_waits(url, read_s, depth=1) for _ in range(3))
        sequential = statistics.median(_sequential_s(url, coalesced=False) for _ in range(3))
        coalesced = statistics.median(_sequential_s(url, coalesced=True) for _ in range(3))
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    overlap = 1 - with_prefetch / without
    print(f"Data from S3 (moto, loopback), global batch {GLOBAL_BATCH} × {SEQ_LEN + 1} tokens, {STEPS} steps")
    print(f"  one step's read {read_s * 1e3:.0f} ms | training-thread wait: {without:.2f} s without prefetch, "
          f"{with_prefetch:.2f} s with → overlap {overlap:.2f} of the read time hidden")
    print(f"  sequential 1024 samples: one GET per sample {sequential:.2f} s, coalesced {coalesced:.2f} s "
          f"→ {sequential / coalesced:.1f}x")
    return {"overlap": overlap, "coalesce_speedup": sequential / coalesced, "read_s": read_s}


if __name__ == "__main__":
    main()
