"""``gpufeed worker``: its options are ``WorkerConfig``'s fields (cli/options.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gpufeed.cli.options import with_settings
from gpufeed.errors import GpufeedError
from gpufeed.worker.config import WorkerConfig


@with_settings(WorkerConfig)
def worker(
    log_format: Annotated[
        str,
        typer.Option(
            help="auto (console on a terminal, else json), console or json.",
            envvar="GPUFEED_LOG_FORMAT",
        ),
    ] = "auto",
    log_level: Annotated[
        str,
        typer.Option(
            help="debug (one event per batch), info, warning or error.",
            envvar="GPUFEED_LOG_LEVEL",
        ),
    ] = "info",
    **settings: Any,
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
    from gpufeed.cli.logs import LogSetup
    from gpufeed.worker.start import check_locally, run_worker

    try:
        setup = LogSetup(log_format, log_level)
        config = WorkerConfig(**settings)
        check_locally(config)
    except GpufeedError as exc:
        typer.echo(f"gpufeed worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    setup("supervisor")
    raise typer.Exit(run_worker(config, child_setup=setup))
