"""The model benchmark a GPU machine runs without the embeddings example
(benchmarks/mlp_op.py, the ``model`` stage of benchmarks/gpu-check.sh), run here
on the CPU: the worker's answers must be the model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the example's extra: make example-embeddings-test runs this

ROOT = Path(__file__).resolve().parents[2]


def test_bench_model_serves_the_seeded_mlp_and_matches_direct_calls() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gpufeed", "bench", "model", "--op", "mlp_op:mlp", "--json",
         "--messages", "192", "--max-batch", "32", "--rounds", "1", "--latency-samples", "5"],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["op"] == "mlp" and result["messages"] == 192
    # Each process seeds its own copy of the weights: a wrong seed or a shuffled
    # batch would show as a cosine far from 1.
    assert result["min_cosine"] >= 0.999
    assert result["throughput_ratio_vs_direct"] > 0 and result["latency_samples"] == 5
