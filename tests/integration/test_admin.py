"""``gpufeed stats`` and ``gpufeed dead …`` against a real server."""

from __future__ import annotations

import json
import secrets

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


COMMANDS = {
    "demo": ["demo", "--messages-per-op", "10"],
    "stats": ["stats"],
    "produce": ["produce", "--count", "10"],
    "dead list": ["dead", "list"],
    "dead replay": ["dead", "replay", "--all"],
    "dead purge": ["dead", "purge", "--yes"],
}


@pytest.fixture
def wrong_password(redis_server, client):
    """A URL naming a real user of the test server with the wrong password."""
    user = f"gpufeed-test-{secrets.token_hex(3)}"
    client.execute_command("ACL", "SETUSER", user, "on", ">right", "~*", "+@all")
    host_port = redis_server.url.split("//", 1)[1]
    yield f"redis://{user}:wrong@{host_port}"
    client.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("problem", "said"),
    [
        ("unreachable", "cannot reach Redis at redis://127.0.0.1:1/0"),
        ("unreachable cluster", "cannot reach Redis at redis+cluster://127.0.0.1:1"),
        ("unknown host", "cannot reach Redis at redis://no-such-host.invalid:6379/0"),
        ("wrong password", "refused the credentials"),
        ("port out of range", "--redis-url: bad port"),
        ("database not a number", "--redis-url: database 'abc' is not a number"),
    ],
)
def test_every_command_says_in_one_line_what_is_wrong_with_its_redis_and_exits_2(
    command, problem, said, request
) -> None:
    url = {
        "unreachable": "redis://127.0.0.1:1/0",
        "unreachable cluster": "redis+cluster://127.0.0.1:1",
        "unknown host": "redis://no-such-host.invalid:6379/0",
        "port out of range": "redis://localhost:99999/0",
        "database not a number": "redis://localhost/abc",
    }.get(problem) or request.getfixturevalue("wrong_password")
    queue = [] if command == "demo" else ["--queue", "jobs"]
    code, out = cli(*COMMANDS[command], *queue, "--redis-url", url)
    # (the demo says what it is doing first, on lines of its own)
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("demo:")]
    assert code == 2 and len(lines) == 1, out
    assert lines[0].startswith(f"gpufeed {command}: ") and said in lines[0]
    assert "Traceback" not in out and ":wrong@" not in out  # no password in the message


@pytest.mark.parametrize(
    "args",
    [["dead", "replay", "notanid"], ["dead", "purge", "--yes", "1-0", "x"],
     ["dead", "list", "--start", "yesterday"]],
)  # fmt: skip
def test_a_malformed_dead_letter_id_is_refused_before_redis_is_asked(args, redis_server) -> None:
    code, out = cli(*args, "--queue", "jobs", "--redis-url", redis_server.url)
    assert code == 2 and "not a dead-letter id" in out and "Traceback" not in out


def test_produce_refuses_a_slot_size_the_worker_would_refuse(redis_server) -> None:
    code, out = cli("produce", "--slot-bytes", "100", "--redis-url", redis_server.url)
    assert code == 2 and "--slot-bytes: must be a power of two" in out


@pytest.mark.parametrize(
    ("url", "said"),
    [("redis://localhost:99999/0", "--redis-url: bad port"),
     ("redis://localhost:port/0", "--redis-url: bad port"),
     ("redis://localhost/abc", "--redis-url: database 'abc' is not a number")],
)  # fmt: skip
def test_the_worker_refuses_a_malformed_url_before_starting(url, said) -> None:
    code, out = cli("worker", "--redis-url", url, "--queue", "jobs")
    assert code == 2 and out.startswith(f"gpufeed worker: {said}") and "Traceback" not in out


def test_stats_and_metrics_per_priority_level_and_replay_to_one(
    redis_server, client, queue
) -> None:
    from gpufeed.worker.config import WorkerConfig
    from gpufeed.worker.metrics import QueueCollector

    stream, _, dead = keys(queue)
    for level, (n, read) in {0: (10, 4), 2: (7, 3)}.items():
        key = stream + (f":{level}" if level else "")
        xadd_all(client, key, [b"x"] * n)
        client.xgroup_create(key, "gpufeed", id="0")
        client.xreadgroup("gpufeed", "host-0", {key: ">"}, count=read)
    code, out = cli("stats", "--redis-url", redis_server.url, "--queue", queue, "--json")
    assert code == 0, out
    stats = json.loads(out)
    assert (stats["stream_length"], stats["lag"], stats["pending"]) == (17, 10, 7)
    assert [(c["name"], c["pending"]) for c in stats["consumers"]] == [("host-0", 7)]
    assert [(lv["level"], lv["lag"], lv["pending"]) for lv in stats["levels"]] == [
        (0, 6, 4), (2, 4, 3)
    ]  # fmt: skip
    code, out = cli("stats", "--redis-url", redis_server.url, "--queue", queue)
    assert "priority levels       2" in out and f"{stream}:2" in out

    config = WorkerConfig(redis_url=redis_server.url, queue=queue)
    families = {f.name: f for f in QueueCollector(config).collect()}
    lag = {s.labels["level"]: s.value for s in families["gpufeed_level_lag_entries"].samples}
    assert lag == {"0": 6, "2": 4}
    assert families["gpufeed_group_lag_entries"].samples[0].value == 10

    letter = client.xadd(dead, {"data": b"again", "src": b"1-1", "error": b"e"})
    url = ["--redis-url", redis_server.url, "--queue", queue]
    assert cli("dead", "replay", *url, "--priority", "2", letter.decode())[0] == 0
    assert client.xrevrange(f"{stream}:2", count=1)[0][1] == {b"data": b"again"}
    assert cli("dead", "replay", *url, "--priority", "99", "--all")[0] == 2
