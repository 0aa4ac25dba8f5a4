"""``gpufeed bench …`` runs end to end and prints the documented JSON line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

# Which server a benchmark's figures come from: name, version, memory allocator.
SERVER = re.compile(r"^(redis|valkey) \d+\.\d+\.\d+ \(\S+\)$")


def run_cli(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gpufeed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(180)
def test_bench_ring_prints_one_json_object_with_the_documented_keys() -> None:
    out = run_cli(
        "bench", "ring", "--json", "--slots", "50000", "--repeats", "1", "--wake-samples", "20"
    )
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("slots_per_s", "gb_per_s", "mp_queue_msgs_per_s", "ratio_vs_mp_queue"):
        assert result[key] > 0, key
    assert result["slot_bytes"] == 64 and result["batch"] == 256
    assert 0 < result["wake_p50_us"] <= result["wake_p99_us"]
    assert 0 < result["pipe_wake_p50_us"] <= result["pipe_wake_p99_us"]
    assert result["wake_ratio_vs_pipe"] == pytest.approx(
        result["wake_p50_us"] / result["pipe_wake_p50_us"], rel=0.05
    )
    assert result["gb_per_s"] == pytest.approx(result["slots_per_s"] * 64 / 1e9, rel=1e-2)


@pytest.mark.timeout(120)
def test_bench_pack_prints_entries_per_second_and_plots_the_run(tmp_path: Path) -> None:
    png = tmp_path / "pack.png"
    out = run_cli(
        "bench", "pack", "--json", "--batches", "20", "--repeats", "1", "--plot", str(png)
    )
    result = json.loads(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "a PNG was drawn"
    assert png.stat().st_size > 5000, "with something in it"
    assert result["slot_bytes"] == 128 and result["payload_bytes"] == 64
    assert result["entries_per_s"] > 0 and result["naive_entries_per_s"] > 0


def test_bench_pack_refuses_payloads_larger_than_the_slot() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpufeed", "bench", "pack", "--slot-bytes", "64",
         "--payload-bytes", "64"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "payload_bytes must be at most slot_bytes - 16 = 48" in done.stderr


def test_bench_commit_times_the_commit_script_and_the_floor_call() -> None:
    out = run_cli(
        "bench", "commit", "--json", "--batch", "50", "--held", "100", "--calls", "3",
        timeout=120,
    )  # fmt: skip
    result = json.loads(out)
    assert SERVER.match(result["server"]), result["server"]
    assert (result["batch"], result["held"], result["calls"]) == (50, 100, 3)
    assert result["commit_us_per_entry"] > 0 and result["floor_us_per_entry"] > 0
    assert result["ratio_vs_floor"] == pytest.approx(
        result["floor_us_per_entry"] / result["commit_us_per_entry"], rel=0.01
    )


def test_bench_commit_refuses_an_empty_batch() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpufeed", "bench", "commit", "--batch", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--batch" in proc.stderr


@pytest.mark.timeout(240)
def test_bench_e2e_measures_the_worker_and_the_floor() -> None:
    out = run_cli(
        "bench", "e2e", "--json", "--messages", "3000", "--latency-messages", "500",
        "--repeats", "1", timeout=220,
    )  # fmt: skip
    result = json.loads(out)
    assert SERVER.match(result["server"]), result["server"]
    assert result["messages"] == 3000
    assert result["msgs_per_s"] > 0 and result["floor_msgs_per_s"] > 0
    assert result["ratio_vs_floor"] == pytest.approx(
        result["msgs_per_s"] / result["floor_msgs_per_s"], rel=0.01
    )
    # the checked floor answered every message too (a run waits for all results)
    assert result["ratio_vs_checked_floor"] == pytest.approx(
        result["msgs_per_s"] / result["checked_floor_msgs_per_s"], rel=0.01
    )
    # latencies run to a client reading the result, so none is zero
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert 0 < result["floor_p50_ms"] <= result["floor_p99_ms"]
    # CPU accounting saw the consuming processes and the server do the work
    for key in ("worker_cpu_us_per_msg", "floor_cpu_us_per_msg", "redis_cpu_us_per_msg",
                "floor_redis_cpu_us_per_msg", "checked_floor_redis_cpu_us_per_msg"):  # fmt: skip
        assert result[key] > 0, key


@pytest.mark.timeout(240)
def test_bench_scale_measures_setups_against_one_worker_on_one_server() -> None:
    out = run_cli(
        "bench", "scale", "--json", "--messages", "3000", "--repeats", "1",
        "--only", "workers_2", "--only", "queues_3_shards_3", timeout=220,
    )  # fmt: skip
    result = json.loads(out)
    assert SERVER.match(result["server"]), result["server"]
    assert result["baseline_ratio_vs_baseline"] == 1.0
    for setup in ("baseline", "workers_2", "queues_3_shards_3"):
        assert result[f"{setup}_msgs_per_s"] > 0
        assert result[f"{setup}_redis_cpu_us_per_msg"] > 0  # Redis did the work
        busiest = result[f"{setup}_busiest_process_cpu_us_per_msg"]
        assert 0 < busiest <= result[f"{setup}_worker_cpu_us_per_msg"]
    assert result["workers_2_ratio_vs_baseline"] == pytest.approx(
        result["workers_2_msgs_per_s"] / result["baseline_msgs_per_s"], rel=0.01
    )
    assert "workers_4_msgs_per_s" not in result  # --only left it out
    assert 0 < result["workers_2_spread_min_over_max"] <= 1  # both workers answered some
    assert "baseline_spread_min_over_max" not in result  # one consumer: no spread


@pytest.mark.timeout(180)
def test_bench_gpu_persistent_runs_on_the_emulated_device_and_prints_its_keys() -> None:
    out = run_cli(
        "bench", "gpu", "--backend", "persistent", "--emulate-device", "--json", "--op", "echo",
        "--messages", "20000", "--samples", "300", "--batch", "256", timeout=160,
    )  # fmt: skip
    (line,) = out.strip().splitlines()  # nothing but the JSON line on stdout
    result = json.loads(line)
    assert result["op"] == "echo" and result["device"] == "emulated"
    assert 0 < result["roundtrip_p50_us"] <= result["roundtrip_p99_us"]
    assert result["msgs_per_s"] > 0
    assert result["batched_roundtrip_p50_us"] is None  # no GPU: no batched baseline


def test_bench_gpu_without_a_device_says_so() -> None:
    from gpufeed.gpu.select import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a CUDA device (tests/gpu runs bench gpu)")
    done = subprocess.run(
        [sys.executable, "-m", "gpufeed", "bench", "gpu", "--backend", "batched"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no CUDA device 0" in done.stderr


@pytest.mark.timeout(60)
def test_bench_e2e_latency_runs_to_when_a_client_reads_the_result(redis_server, queue) -> None:
    """Not to the result's own id: a result whose id says it was written 300 ms
    after its input, but that only appears 500 ms after it, is 500 ms late."""
    from gpufeed.bench.e2e import _ResultReader

    client = redis.Redis.from_url(redis_server.url)
    out = f"{queue}:out"
    client.xadd(out, {"src": "1-0", "status": "ok", "data": "warm-up"}, id="1-0")
    reader = _ResultReader(client, redis_server.url, out, 2, timeout_s=20)
    now_ms = int(time.time() * 1000)
    for i in range(2):
        client.xadd(out, {"src": f"{now_ms - 500}-{i}", "status": "ok", "data": "x"},
                    id=f"{now_ms - 200}-{i}")  # fmt: skip
    try:
        latencies = reader.latencies()
    finally:
        reader.close()
    assert len(latencies) == 2  # the warm-up entry before it started is not counted
    assert all(500 <= lat < 500 + 5_000 for lat in latencies), latencies


@pytest.mark.timeout(180)
def test_bench_latency_prints_both_round_trips_and_the_stages_of_every_sample() -> None:
    result = json.loads(run_cli("bench", "latency", "--json", "--samples", "40", "--rounds", "2"))
    assert SERVER.match(result["server"])
    assert result["samples"] == result["floor_samples"] == 40
    assert result["traced_samples"] == 40, "every message's stages were logged"
    for who in ("", "floor_"):
        assert 0 < result[f"{who}rtt_p50_us"] <= result[f"{who}rtt_p99_us"]
    assert result["rtt_ratio_p50"] == pytest.approx(
        result["rtt_p50_us"] / result["floor_rtt_p50_us"], rel=0.01
    )
    stages = (
        "read_wake",
        "pack",
        "request_hop",
        "compute",
        "response_hop",
        "commit_wait",
        "commit",
    )
    for stage in stages:
        assert 0 < result[f"{stage}_p50_us"] <= result[f"{stage}_p99_us"], stage
    # The client may wake before the worker has the commit's reply: the result is
    # in the stream before Redis answers the script.
    assert result["client_wake_p50_us"] <= result["client_wake_p99_us"]
    assert sum(result[f"{s}_p50_us"] for s in stages) < 2 * result["rtt_p50_us"]
