"""``gpufeed stats`` and ``gpufeed dead …``: how far behind, what is stuck, what died."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from typing import Annotated, Any

import typer

from gpufeed.cli.options import REDIS_OPTIONS, fail, redis_session, with_settings
from gpufeed.errors import GpufeedError
from gpufeed.worker.config import WorkerConfig

dead_app = typer.Typer(
    help="""Inspect and act on the dead-letter stream gpufeed:{QUEUE}:dead.

Examples:

  gpufeed dead list --queue images

  gpufeed dead replay --queue images 1712000000000-0 1712000000000-1

  gpufeed dead replay --queue images --all

  gpufeed dead purge --queue images --yes
""",
    no_args_is_help=True,
)

# A stream entry id, as Redis takes it: milliseconds, and a sequence number.
STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Where a queue is: the worker's own settings of the same names.
queue_options = with_settings(WorkerConfig, *REDIS_OPTIONS, "queue")


def _keys(command: str, settings: dict[str, Any], ids: list[str] | None = None) -> Any:
    """The queue's keys, or exit 2 saying what is wrong with the name or ``ids``."""
    from gpufeed.errors import ConfigError
    from gpufeed.keys import QueueKeys

    try:
        keys = QueueKeys(settings["queue"])
    except ConfigError as exc:
        raise fail(command, exc) from exc
    bad = [i for i in ids or [] if not STREAM_ID.fullmatch(i)]
    if bad:
        raise fail(command, f"not a dead-letter id: {', '.join(map(repr, bad))} (ids look "
                            "like 1712000000000-0; `gpufeed dead list` shows them)")  # fmt: skip
    return keys


def _ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _render(stats: Any) -> str:
    lines = [
        f"queue {stats.queue}",
        f"  input stream length   {stats.stream_length}",
        f"  group lag             {'-' if stats.lag is None else stats.lag}"
        + ("" if stats.group_exists else "  (no consumer group yet)"),
        f"  pending               {stats.pending}",
        f"  oldest pending        {stats.oldest_pending_id or '-'}"
        f"  idle {_ago(stats.oldest_pending_idle_ms)}",
        f"  dead letters          {stats.dead_letters}",
        f"  results               {stats.results}",
        f"  consumers             {len(stats.consumers)}",
    ]
    for c in stats.consumers:
        lines.append(f"    {c.name:<32} pending {c.pending:<8} idle {_ago(c.idle_ms)}")
    if stats.levels:
        lines.append(f"  priority levels       {len(stats.levels)} (highest first)")
    for lv in reversed(stats.levels):
        lag = "-" if lv.lag is None else lv.lag
        lines.append(f"    {lv.level:<3} {lv.stream:<40} lag {lag:<8} pending {lv.pending:<8} "
                     f"oldest pending idle {_ago(lv.oldest_pending_idle_ms)}")  # fmt: skip
    return "\n".join(lines)


@with_settings(WorkerConfig, *REDIS_OPTIONS, "queue", "group")
def stats(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until interrupted.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    count: Annotated[
        int, typer.Option(help="With --watch: stop after N refreshes (0: never).")
    ] = 0,
    as_json: JsonFlag = False,
    **settings: Any,
) -> None:
    """Show a queue's backlog: stream length, group lag, pending entries and the
    oldest one's idle time, consumers, dead letters and results.

    Examples:

      gpufeed stats --queue images

      gpufeed stats --queue images --watch --interval 5

      gpufeed stats --queue images --json | jq .lag
    """
    from gpufeed.admin.stats import queue_stats

    keys = _keys("stats", settings)
    shown = 0
    with redis_session("stats", settings) as client, contextlib.suppress(KeyboardInterrupt):
        while True:
            snapshot = queue_stats(client, keys, settings["group"])
            if as_json:
                typer.echo(json.dumps(snapshot.as_dict()))
            else:
                if watch and shown:
                    typer.echo("")
                typer.echo(_render(snapshot))
            shown += 1
            if not watch or (count and shown >= count):
                return
            time.sleep(interval)


@dead_app.command("list")
@queue_options
def dead_list(
    count: Annotated[int, typer.Option(help="Most entries to show.")] = 20,
    start: Annotated[str, typer.Option(help="First dead-letter id to show.")] = "-",
    as_json: JsonFlag = False,
    **settings: Any,
) -> None:
    """List dead letters, oldest first, with why each one died.

    Example: gpufeed dead list --queue images --count 5
    """
    from gpufeed.admin.dead import dead_letters

    keys = _keys("dead list", settings, [] if start == "-" else [start.removeprefix("(")])
    with redis_session("dead list", settings) as client:
        rows = dead_letters(client, keys, count=count, start=start)
    if as_json:
        for row in rows:
            fields = {k: v.decode(errors="replace") for k, v in row.fields.items()}
            typer.echo(json.dumps({**row.__dict__, "fields": fields}))
        return
    if not rows:
        typer.echo(f"no dead letters in {keys.dead_key}")
    for row in rows:
        names = ",".join(sorted(row.fields))
        typer.echo(
            f"{row.id}  src={row.src}  deliveries={row.deliveries}  fields=[{names}]\n"
            f"    {row.error}"
        )


@dead_app.command("replay")
@queue_options
def dead_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids to replay.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    priority: Annotated[
        int, typer.Option(help="The priority level to replay to: 0 is in, N > 0 in:N.")
    ] = 0,
    **settings: Any,
) -> None:
    """Move dead letters back to the input stream with their original fields.

    Each entry is re-added and removed from the dead letters in one atomic
    step. Replay after fixing the cause (a missing op, a bad producer), or the
    entries simply die again.

    Example: gpufeed dead replay --queue images --all
    """
    from gpufeed.admin.dead import replay

    if not ids and not replay_all:
        raise typer.BadParameter("give dead-letter ids, or --all")
    keys = _keys("dead replay", settings, ids)
    try:
        stream = keys.level_key(priority)
    except GpufeedError as exc:
        raise fail("dead replay", exc) from exc
    with redis_session("dead replay", settings) as client:
        moved = replay(client, keys, None if replay_all else list(ids or []), priority)
    missing = [i for i in ids or [] if i not in moved]
    typer.echo(f"replayed {len(moved)} dead letters to {stream}")
    if missing:
        typer.echo(f"not found: {', '.join(missing)}", err=True)
        raise typer.Exit(1)


@dead_app.command("purge")
@queue_options
def dead_purge(
    ids: Annotated[list[str] | None, typer.Argument(help="Ids to delete (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    **settings: Any,
) -> None:
    """Delete dead letters for good: the given ids, or all of them.

    Example: gpufeed dead purge --queue images --yes
    """
    from gpufeed.admin.dead import purge

    keys = _keys("dead purge", settings, ids)
    with redis_session("dead purge", settings) as client:
        count = len(ids) if ids else client.xlen(keys.dead_key)
        what = f"{count} dead letters" if ids else f"all {count} dead letters"
        if not yes:
            typer.confirm(f"Delete {what} from {keys.dead_key}?", abort=True)
        typer.echo(f"deleted {purge(client, keys, list(ids) if ids else None)} dead letters")


def acl(
    role: Annotated[str, typer.Argument(help="worker or producer.")],
    queue: Annotated[str, typer.Option(help="Queue name, or * for every queue.")] = "default",
    user: Annotated[str | None, typer.Option(help="User name (default: gpufeed-ROLE).")] = None,
    reply: Annotated[
        str | None,
        typer.Option(
            help="Producer: may read, trim and delete gpufeed:{QUEUE}:reply:NAME and "
            "reply:NAME:* (the streams of gpufeed.Client(name=NAME))."
        ),
    ] = None,
    cluster: Annotated[
        bool, typer.Option("--cluster", help="Add what a Redis Cluster client needs.")
    ] = False,
) -> None:
    """Print an ACL SETUSER command for a least-privilege worker or producer user.

    The password is left as >PASSWORD: replace it, then run the line with
    redis-cli (on every node of a cluster).

    Examples:

      gpufeed acl worker --queue images

      gpufeed acl producer --queue images --reply web-1 --user web-1
    """
    from gpufeed.admin.acl import acl_rules
    from gpufeed.errors import ConfigError

    try:
        rules = acl_rules(role, queue, reply=reply, cluster=cluster)
    except ConfigError as exc:
        raise fail("acl", exc) from exc
    name = user or f"gpufeed-{role}"
    # Quoted for shells and redis-cli alike: a selector, "(+get ~KEYS)", is one
    # argument, and an unquoted >PASSWORD would be a shell redirection.
    words = ["ACL", "SETUSER", name, "on", ">PASSWORD", *rules]
    typer.echo(" ".join(map(shlex.quote, words)))
