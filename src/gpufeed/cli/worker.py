"""``gpufeed worker``, ``gpufeed produce`` and ``gpufeed demo``."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from gpufeed.errors import ConfigError, GpufeedError

if TYPE_CHECKING:
    from gpufeed.worker.connect import RedisTarget


def _opt(help_text: str, name: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(help=help_text, envvar=f"GPUFEED_{name}")
    return option


RedisUrl = Annotated[
    str,
    _opt(
        "redis://, rediss:// (TLS), redis+cluster:// or rediss+cluster:// (any cluster node).",
        "REDIS_URL",
    ),
]
TlsCaCert = Annotated[
    str | None, _opt("CA certificates that sign the server's (rediss://).", "TLS_CA_CERT")
]
TlsCert = Annotated[
    str | None, _opt("Client certificate, for servers that check clients.", "TLS_CERT")
]
TlsKey = Annotated[str | None, _opt("The client certificate's private key.", "TLS_KEY")]


def redis_target(
    command: str, url: str, ca: str | None, cert: str | None, key: str | None
) -> RedisTarget:
    """The Redis options of a command, or exit 2 saying what is wrong with them."""
    from gpufeed.worker.connect import RedisTarget

    try:
        return RedisTarget(url, ca, cert, key)
    except ConfigError as exc:
        typer.echo(f"gpufeed {command}: {exc}", err=True)
        raise typer.Exit(2) from exc


Queue = Annotated[str, _opt("Queue name: streams gpufeed:{NAME}:in/out/dead.", "QUEUE")]
OpName = Annotated[str, _opt("Op: a built-in, an entry point, or package.module:attribute.", "OP")]


def worker(
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    tls_ca_cert: TlsCaCert = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    queue: Queue = "default",
    op: OpName = "echo",
    backend: Annotated[str, _opt("auto, cpu, batched or persistent.", "BACKEND")] = "auto",
    ingest_procs: Annotated[int, _opt("Ingest processes (Redis I/O).", "INGEST_PROCS")] = 1,
    max_batch: Annotated[int, _opt("Most messages per batch.", "MAX_BATCH")] = 1024,
    max_wait_ms: Annotated[int, _opt("XREADGROUP BLOCK when idle, ms.", "MAX_WAIT_MS")] = 5,
    slot_bytes: Annotated[int, _opt("Slot size (power of two >= 64).", "SLOT_BYTES")] = 256,
    ring_capacity: Annotated[int, _opt("Slots per ring.", "RING_CAPACITY")] = 4096,
    visibility_timeout_ms: Annotated[
        int, _opt("Idle time before XAUTOCLAIM takes an entry over.", "VISIBILITY_TIMEOUT_MS")
    ] = 30_000,
    max_deliveries: Annotated[
        int, _opt("Deliveries before an entry is dead-lettered.", "MAX_DELIVERIES")
    ] = 5,
    delete_acked: Annotated[
        bool,
        typer.Option(
            "--delete-acked/--keep-acked",
            help="XDEL input entries once answered.",
            envvar="GPUFEED_DELETE_ACKED",
        ),
    ] = False,
    drain_timeout_s: Annotated[
        float, _opt("Seconds to finish in-flight work on SIGTERM.", "DRAIN_TIMEOUT_S")
    ] = 30.0,
    log_format: Annotated[
        str, _opt("auto (console on a terminal, else json), console or json.", "LOG_FORMAT")
    ] = "auto",
    log_level: Annotated[
        str, _opt("debug (one event per batch), info, warning or error.", "LOG_LEVEL")
    ] = "info",
    group: Annotated[str, _opt("Consumer group name.", "GROUP")] = "gpufeed",
    consumer: Annotated[str, _opt("Consumer name prefix (default: host name).", "CONSUMER")] = "",
    start_id: Annotated[
        str, _opt("Where a new group starts: 0 (all) or $ (new only).", "START_ID")
    ] = "0",
    out_maxlen: Annotated[
        int, _opt("MAXLEN ~ for result and dead-letter streams (0: none).", "OUT_MAXLEN")
    ] = 1_000_000,
    dense_model: Annotated[str | None, _opt("W/b .npz for the dense op.", "DENSE_MODEL")] = None,
    metrics_port: Annotated[
        int, _opt("Serve Prometheus metrics on this port (0: off).", "METRICS_PORT")
    ] = 0,
    metrics_host: Annotated[
        str, _opt("Address the metrics endpoint listens on.", "METRICS_HOST")
    ] = "0.0.0.0",
    device: Annotated[int, _opt("CUDA device for the GPU backends.", "DEVICE")] = 0,
    cuda_streams: Annotated[
        int, _opt("batched: CUDA streams, one batch in flight on each.", "CUDA_STREAMS")
    ] = 4,
    staging: Annotated[
        str,
        _opt("batched: copy requests via pinned buffers, or DMA from registered rings.", "STAGING"),
    ] = "pinned",
    persistent_payload: Annotated[
        str,
        _opt("persistent: requests in mapped host memory or device memory.", "PERSISTENT_PAYLOAD"),
    ] = "mapped",
    emulate_device: Annotated[
        bool,
        typer.Option(
            "--emulate-device/--no-emulate-device",
            help="persistent: run the device side as a CPU thread (tests; no GPU needed).",
            envvar="GPUFEED_EMULATE_DEVICE",
        ),
    ] = False,
) -> None:
    """Serve a queue: read, batch, compute, write one result per message.

    Examples:

      gpufeed worker --redis-url redis://redis:6379/0 --queue images --op sha256

      gpufeed worker --queue images --op vector_add --ingest-procs 2 --metrics-port 9400

      GPUFEED_QUEUE=images GPUFEED_OP=sha256 gpufeed worker --log-format json

      gpufeed worker --redis-url redis+cluster://node-1:6379 --queue images --op sha256

      gpufeed worker --redis-url rediss://gpufeed:PASSWORD@redis:6380/0 --tls-ca-cert ca.pem

      gpufeed worker --queue ticks --op echo --backend persistent --max-batch 64
    """
    from gpufeed.cli.logs import LOG_FORMATS, LOG_LEVELS, LogSetup
    from gpufeed.worker.config import WorkerConfig

    try:
        if log_format not in LOG_FORMATS or log_level not in LOG_LEVELS:
            raise ConfigError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)} and "
                f"--log-level one of {', '.join(LOG_LEVELS)}"
            )
        config = WorkerConfig(
            redis_url=redis_url, queue=queue, op=op, backend=backend,
            ingest_procs=ingest_procs, max_batch=max_batch, max_wait_ms=max_wait_ms,
            slot_bytes=slot_bytes, ring_capacity=ring_capacity,
            visibility_timeout_ms=visibility_timeout_ms, max_deliveries=max_deliveries,
            delete_acked=delete_acked, drain_timeout_s=drain_timeout_s,
            group=group, consumer=consumer, start_id=start_id, out_maxlen=out_maxlen,
            dense_model=dense_model, metrics_port=metrics_port, metrics_host=metrics_host,
            tls_ca_cert=tls_ca_cert, tls_cert=tls_cert, tls_key=tls_key, device=device,
            cuda_streams=cuda_streams, staging=staging, persistent_payload=persistent_payload,
            emulate_device=emulate_device,
        )  # fmt: skip
        _check_op(config)
        _check_backend(config)
    except GpufeedError as exc:
        typer.echo(f"gpufeed worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    setup = LogSetup(log_format, log_level)
    setup("supervisor")
    with _metrics_dir(config.metrics_port > 0):
        from gpufeed.worker.supervisor import Supervisor  # after the metrics directory is set

        code = Supervisor(config, child_setup=setup).run()
    raise typer.Exit(code)


@contextlib.contextmanager
def _metrics_dir(enabled: bool) -> Iterator[None]:
    """prometheus-client's multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set
    before it is first imported, here and in every child (they inherit it)."""
    if not enabled:
        yield
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    path = tempfile.mkdtemp(prefix="gpufeed-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_op(config: object) -> None:
    """Load the op once up front, so a bad --op fails before any process starts."""
    from gpufeed.gpu.ops import OpTable
    from gpufeed.packing.layout import payload_capacity
    from gpufeed.worker.config import WorkerConfig

    assert isinstance(config, WorkerConfig)
    OpTable.for_worker(
        config.op, payload_capacity(config.slot_bytes), dense_model=config.dense_model
    )


def _check_backend(config: object) -> None:
    """A GPU backend on a machine that cannot run it fails here, not in a restart loop."""
    from gpufeed.worker.backends import check_backend
    from gpufeed.worker.config import WorkerConfig

    assert isinstance(config, WorkerConfig)
    check_backend(config)


def produce(
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    tls_ca_cert: TlsCaCert = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    queue: Queue = "default",
    op: OpName = "echo",
    count: Annotated[int, typer.Option(help="Messages to write.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Messages per second (0: as fast as possible).")] = 0,
    slot_bytes: Annotated[int, typer.Option(help="The worker's slot size.")] = 256,
    seed: Annotated[int, typer.Option(help="Payload random seed.")] = 0,
) -> None:
    """Write COUNT valid messages for OP to the queue's input stream.

    Examples:

      gpufeed produce --queue jobs --op sha256 --count 100000

      gpufeed produce --queue jobs --op vector_add --count 50000 --rate 5000
    """
    from rich.progress import Progress

    from gpufeed.gpu.ops import load_op
    from gpufeed.packing.layout import payload_capacity
    from gpufeed.worker.config import queue_key
    from gpufeed.worker.payloads import sample_payloads
    from gpufeed.worker.produce import xadd_all

    try:
        payloads = sample_payloads(load_op(op), count, payload_capacity(slot_bytes), seed)
    except (GpufeedError, ValueError) as exc:
        typer.echo(f"gpufeed produce: {exc}", err=True)
        raise typer.Exit(2) from exc
    stream = queue_key(queue, "in")
    client = redis_target("produce", redis_url, tls_ca_cert, tls_cert, tls_key).connect()
    with Progress(transient=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"XADD {stream}", total=count)
        xadd_all(
            client, stream, payloads, op=op, rate=rate,
            progress=lambda done: progress.update(task, completed=done),
        )  # fmt: skip
    typer.echo(f"wrote {count} {op} messages to {stream}")


def demo(
    messages_per_op: Annotated[int, typer.Option(help="Messages for each built-in op.")] = 100_000,
    backend: Annotated[str, typer.Option(help="auto, cpu, batched or persistent.")] = "auto",
    ingest_procs: Annotated[int, typer.Option(help="Ingest processes.")] = 1,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Use this server instead of an embedded one.", envvar="REDIS_URL"),
    ] = None,
) -> None:
    """Run a worker against a private Redis, send every built-in op, check every result.

    Examples:

      gpufeed demo

      gpufeed demo --redis-url redis://localhost:6379/0
    """
    from rich.console import Console
    from rich.table import Table

    from gpufeed.worker.demo import run_demo

    try:
        reports, chosen = run_demo(
            messages_per_op=messages_per_op, backend=backend, ingest_procs=ingest_procs,
            redis_url=redis_url,
        )  # fmt: skip
    except (ConfigError, RuntimeError) as exc:
        typer.echo(f"gpufeed demo: {exc}", err=True)
        raise typer.Exit(2) from exc
    table = Table(title=f"gpufeed demo (backend: {chosen})")
    for column in ("op", "messages", "ok", "error", "wrong", "missing", "duplicate",
                   "msgs/s", "p50 ms", "p99 ms"):  # fmt: skip
        table.add_column(column, justify="left" if column == "op" else "right")
    for r in reports:
        table.add_row(
            r.op, str(r.messages), str(r.ok), str(r.error), str(r.wrong), str(r.missing),
            str(r.duplicates), f"{r.msgs_per_s:,.0f}", f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}",
        )  # fmt: skip
    Console(width=max(Console().width, 110)).print(table)
    typer.echo("latency: input entry to result entry, queueing included (Redis clock, ms).")
    if not all(r.passed for r in reports):
        typer.echo("FAILED: some messages lack exactly one correct result", err=True)
        raise typer.Exit(1)
    typer.echo("PASSED: every message has exactly one correct result")
