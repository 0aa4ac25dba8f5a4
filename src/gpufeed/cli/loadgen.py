"""``gpufeed produce`` and ``gpufeed demo``: load for a queue, and the whole pipeline checked."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from gpufeed.cli.options import REDIS_OPTIONS, fail, redis_session, with_settings
from gpufeed.errors import GpufeedError
from gpufeed.worker.config import WorkerConfig


@with_settings(WorkerConfig, *REDIS_OPTIONS, "queue", "op", "slot_bytes")
def produce(
    count: Annotated[int, typer.Option(help="Messages to write.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Messages per second (0: as fast as possible).")] = 0,
    seed: Annotated[int, typer.Option(help="Payload random seed.")] = 0,
    priority: Annotated[
        int, typer.Option(help="Priority level: 0 writes to in, N > 0 to in:N.")
    ] = 0,
    **settings: Any,
) -> None:
    """Write COUNT valid messages for OP to the queue's input stream (of one priority level).

    Examples:

      gpufeed produce --queue jobs --op sha256 --count 100000

      gpufeed produce --queue jobs --op vector_add --count 50000 --rate 5000

      gpufeed produce --queue jobs --op sha256 --count 100 --priority 1
    """
    from rich.progress import Progress

    from gpufeed.keys import QueueKeys
    from gpufeed.loadgen.payloads import sample_payloads
    from gpufeed.loadgen.produce import xadd_chunks
    from gpufeed.ops import load_op
    from gpufeed.packing import payload_capacity

    op = settings["op"]
    try:
        WorkerConfig(**settings)  # the worker's own checks: a slot size it would refuse
        stream = QueueKeys(settings["queue"]).level_key(priority)
        capacity = payload_capacity(settings["slot_bytes"])
        payloads = sample_payloads(load_op(op), count, capacity, seed)
    except GpufeedError as exc:
        raise fail("produce", exc) from exc
    with (
        redis_session("produce", settings) as client,
        Progress(transient=not sys.stderr.isatty()) as progress,
    ):
        task = progress.add_task(f"XADD {stream}", total=count)
        for ids in xadd_chunks(client, stream, payloads, op=op, rate=rate):
            progress.advance(task, len(ids))
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
    import redis
    from rich.console import Console
    from rich.table import Table

    from gpufeed.connect import RedisTarget, describe_failure
    from gpufeed.loadgen.demo import run_demo

    try:
        reports, chosen = run_demo(
            messages_per_op=messages_per_op, backend=backend, ingest_procs=ingest_procs,
            redis_url=redis_url, say=lambda line: typer.echo(f"demo: {line}", err=True),
        )  # fmt: skip
    except GpufeedError as exc:
        raise fail("demo", exc) from exc
    except (redis.RedisError, redis.RedisClusterException) as exc:
        # The embedded server is the demo's own: only the user's can be unreachable.
        why = describe_failure(exc, RedisTarget(redis_url)) if redis_url else exc
        raise fail("demo", why) from exc
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
