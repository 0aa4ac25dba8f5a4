"""The ``gpufeed`` command line."""

from __future__ import annotations

import typer

from gpufeed import __version__
from gpufeed.cli.bench import bench_app
from gpufeed.cli.worker import demo, produce, worker

app = typer.Typer(
    name="gpufeed",
    help="A Redis-fed GPU batch worker: Redis Streams in, batched kernels, one result out.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.command()(worker)
app.command()(produce)
app.command()(demo)


@app.command()
def version() -> None:
    """Print gpufeed's version."""
    typer.echo(__version__)


def main() -> None:
    app()
