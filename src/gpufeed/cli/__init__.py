"""The ``gpufeed`` command line."""

from __future__ import annotations

import typer

from gpufeed import __version__
from gpufeed.cli.admin import acl, dead_app, stats
from gpufeed.cli.bench import bench_app
from gpufeed.cli.loadgen import demo, produce
from gpufeed.cli.worker import worker

app = typer.Typer(
    name="gpufeed",
    help="A Redis-fed GPU batch worker: Redis Streams in, batched kernels, one result out.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(dead_app, name="dead")
app.command()(worker)
app.command()(produce)
app.command()(demo)
app.command()(stats)
app.command()(acl)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gpufeed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """A Redis-fed GPU batch worker: Redis Streams in, batched kernels, one result out."""


@app.command()
def version() -> None:
    """Print gpufeed's version (also: gpufeed --version)."""
    typer.echo(__version__)


def main() -> None:
    app()
