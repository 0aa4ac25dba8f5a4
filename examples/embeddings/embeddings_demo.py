"""Sentence embeddings served through Redis by gpufeed, checked against the model.

    python examples/embeddings/embeddings_demo.py [--sentences 3000]

Starts a private Redis server, a worker serving the ``embed`` op, sends the
sentences with ``gpufeed.Client``, and compares every embedding that comes
back with the model's own on the same sentences (cosine similarity >= 0.999).
Exits 0 when all match.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gpufeed_embeddings import SLOT_BYTES, embed, encode, sentences

import gpufeed
from gpufeed.embedded import RedisServer

QUEUE = "embeddings"
BATCH = 64
MIN_COSINE = 0.999


@contextlib.contextmanager
def worker(redis_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``gpufeed worker --op embed`` on ``redis_url``, stopped (drained) on exit."""
    command = [sys.executable, "-m", "gpufeed", "worker", "--redis-url", redis_url,
               "--queue", QUEUE, "--op", "embed", "--slot-bytes", str(SLOT_BYTES),
               "--max-batch", str(BATCH)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def direct(texts: list[str]) -> npt.NDArray[np.float32]:
    """The model called in this process, on batches of the worker's size."""
    return np.concatenate(
        [encode(texts[i : i + BATCH]).cpu().numpy() for i in range(0, len(texts), BATCH)]
    )


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=3000)
    args = parser.parse_args(argv)
    texts = sentences(args.sentences)
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "worker.log"
        with worker(server.url, log), gpufeed.Client(server.url, QUEUE, op=embed) as client:
            start = time.perf_counter()
            futures = client.submit_many(texts)  # one round trip for them all
            got = np.stack([f.result(timeout=600) for f in futures])
            took = time.perf_counter() - start
            # A text the op cannot take gets an error result that names the rule.
            try:
                client.submit("word " * 1000).result(timeout=60)
            except gpufeed.ResultError as exc:
                print(f"a 5,000-byte text: {exc.reason}")
    cos = cosines(got, direct(texts))
    print(f"{len(got)} embeddings of {got.shape[1]} floats in {took:.1f} s "
          f"({len(got) / took:.0f}/s, the worker's model load included); "
          f"cosine vs the model called directly: min {cos.min():.6f}")  # fmt: skip
    return 0 if len(got) == len(texts) and cos.min() >= MIN_COSINE else 1


if __name__ == "__main__":
    sys.exit(main())
