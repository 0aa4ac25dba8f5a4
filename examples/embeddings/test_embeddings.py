"""The embeddings example end to end: a real Redis server, a real worker, the real
model. Runs in CI on the CPU (make example-embeddings-test)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from embeddings_demo import MIN_COSINE, QUEUE, cosines, direct, worker
from gpufeed_embeddings import DIM, MAX_TEXT_BYTES, embed, sentences

import gpufeed
from gpufeed.embedded import RedisServer

pytestmark = pytest.mark.timeout(900)


def test_the_demo_sends_a_thousand_sentences_and_every_embedding_matches_the_model() -> None:
    from embeddings_demo import main

    assert main(["--sentences", "1000"]) == 0


def test_embeddings_match_and_bad_texts_fail_alone_with_a_reason() -> None:
    texts = sentences(300, seed=7)
    long_text = "x" * (MAX_TEXT_BYTES + 1)
    not_utf8 = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    with (
        RedisServer() as server,
        tempfile.TemporaryDirectory() as tmp,
        worker(server.url, Path(tmp) / "worker.log"),
        gpufeed.Client(server.url, QUEUE, op=embed) as client,
    ):
        futures = client.submit_many([*texts[:150], not_utf8, long_text, *texts[150:]])
        with pytest.raises(gpufeed.ResultError, match="not UTF-8 text"):
            futures[150].result(timeout=300)
        with pytest.raises(gpufeed.ResultError, match=f"{MAX_TEXT_BYTES}-byte"):
            futures[151].result(timeout=300)
        good = futures[:150] + futures[152:]
        got = np.stack([f.result(timeout=300) for f in good])
    assert got.shape == (300, DIM) and got.dtype == np.float32
    assert cosines(got, direct(texts)).min() >= MIN_COSINE


def test_bench_model_measures_the_example_against_direct_calls() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpufeed", "bench", "model", "--json", "--messages", "256",
         "--rounds", "1", "--latency-samples", "10"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["op"] == "embed" and result["messages"] == 256
    assert result["min_cosine"] >= MIN_COSINE, "the worker's embeddings are the model's"
    assert result["throughput_ratio_vs_direct"] > 0 and result["rtt_p50_ms"] > 0
    assert result["direct_p50_ms"] > 0 and result["device"]
