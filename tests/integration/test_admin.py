"""``gpufeed stats`` and ``gpufeed dead …`` against a real server."""

from __future__ import annotations

import json

import pytest
import redis
from typer.testing import CliRunner

from conftest import keys, results_by_src, wait_for_results
from gpufeed import __version__
from gpufeed.cli import app
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_version_flag_and_command_print_the_package_version() -> None:
    assert cli("--version") == (0, f"gpufeed {__version__}\n")
    assert cli("version") == (0, f"{__version__}\n")


def test_stats_reports_length_lag_pending_and_consumers(redis_server, client, queue) -> None:
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"x"] * 10)
    client.xgroup_create(stream, "gpufeed", id="0")
    client.xreadgroup("gpufeed", "host-0", {stream: ">"}, count=4)
    client.xadd(keys(queue)[2], {"data": b"x", "error": b"bad"})
    code, out = cli("stats", "--redis-url", redis_server.url, "--queue", queue, "--json")
    assert code == 0, out
    stats = json.loads(out)
    assert stats["stream_length"] == 10
    assert stats["lag"] == 6
    assert stats["pending"] == 4
    assert stats["oldest_pending_id"] == client.xrange(stream, count=1)[0][0].decode()
    assert stats["oldest_pending_idle_ms"] >= 0
    assert [(c["name"], c["pending"]) for c in stats["consumers"]] == [("host-0", 4)]
    assert stats["dead_letters"] == 1 and stats["results"] == 0

    code, out = cli("stats", "--redis-url", redis_server.url, "--queue", queue)
    assert code == 0
    assert "group lag             6" in out and "host-0" in out


def test_stats_of_a_queue_nobody_has_served_yet(redis_server, queue) -> None:
    code, out = cli("stats", "--redis-url", redis_server.url, "--queue", queue, "--json")
    assert code == 0
    stats = json.loads(out)
    assert (stats["group_exists"], stats["stream_length"], stats["pending"]) == (False, 0, 0)


def test_stats_watch_refreshes(redis_server, queue) -> None:
    args = ["--redis-url", redis_server.url, "--queue", queue, "--json"]
    code, out = cli("stats", *args, "--watch", "--interval", "0.05", "--count", "3")
    assert code == 0
    assert len(out.splitlines()) == 3


def test_dead_letters_are_listed_replayed_with_their_fields_and_answered(
    redis_server, client, queue, start_worker
) -> None:
    stream, _, dead = keys(queue)
    # vector_add needs a payload of 8k bytes: these three die, with their cids.
    xadd_all(client, stream, [b"abc", b"defgh", b"ij"], op="vector_add", cid_prefix="c")
    worker = start_worker("--op", "vector_add")
    wait_for_results(client, queue, 3, timeout=30, worker=worker)
    url = ["--redis-url", redis_server.url, "--queue", queue]

    code, listing = cli("dead", "list", *url, "--json")
    assert code == 0
    rows = [json.loads(line) for line in listing.splitlines()]
    assert sorted(r["fields"]["data"] for r in rows) == ["abc", "defgh", "ij"]
    assert all("wrong payload length" in r["error"] for r in rows)

    # Fix the payload in place of a fixed producer: replay one entry, unchanged.
    code, text = cli("dead", "replay", *url, rows[0]["id"])
    assert (code, text) == (0, f"replayed 1 dead letters to {stream}\n")
    assert client.xrange(dead, rows[0]["id"], rows[0]["id"]) == [], "moved, not copied"
    replayed = client.xrevrange(stream, count=1)[0][1]
    assert replayed == {b"data": b"abc", b"op": b"vector_add", b"cid": b"c0"}
    assert cli("dead", "replay", *url, "0-1")[0] == 1, "an unknown id is reported"

    # The worker answers the replayed entry again (it is still a bad payload).
    wait_for_results(client, queue, 4, timeout=30, worker=worker)
    assert client.xlen(dead) == 3

    code, _ = cli("dead", "purge", *url, input="n\n")
    assert code != 0 and client.xlen(dead) == 3, "purge without --yes asks, and no means no"
    assert cli("dead", "purge", *url, input="y\n") == (0, _confirm_text(stream, 3))
    assert client.xlen(dead) == 0
    assert len(results_by_src(client, queue)) == 4


def _confirm_text(stream: str, n: int) -> str:
    dead = stream.removesuffix(":in") + ":dead"
    return f"Delete all {n} dead letters from {dead}? [y/N]: y\ndeleted {n} dead letters\n"


def test_purge_by_id_and_replay_all(redis_server, client: redis.Redis, queue) -> None:
    stream, _, dead = keys(queue)
    ids = [client.xadd(dead, {"data": b"d%d" % i, "src": b"1-%d" % i, "error": b"e"})
           for i in range(5)]  # fmt: skip
    url = ["--redis-url", redis_server.url, "--queue", queue]
    assert cli("dead", "purge", *url, "--yes", ids[0].decode()) == (0, "deleted 1 dead letters\n")
    assert cli("dead", "replay", *url, "--all")[0] == 0
    assert client.xlen(dead) == 0
    assert [f for _, f in client.xrange(stream)] == [{b"data": b"d%d" % i} for i in range(1, 5)]
