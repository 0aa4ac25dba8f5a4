"""Start-up check: may this Redis user do everything a worker does?

A worker under a least-privilege ACL user (docs/scaling.md) that lacks one
permission would otherwise fail later, mid-batch, or restart forever. So
before starting any process the supervisor runs every command the worker
needs once, in a form that changes nothing: a consumer group that does not
exist, an XADD with the invalid id 0-0. Redis checks ACL
permissions (command and keys) before it looks at the arguments, so a
``NOPERM`` reply means the permission is missing and any other reply, error
or not, means it is there. All missing permissions are reported at once.

Commands the commit script runs are checked directly too: Redis applies the
user's ACL to every ``redis.call`` inside a script. ``reply_to`` streams are
chosen by producers, so they cannot be checked here; the commit script turns a
refused one into an error result (see commit.lua).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace

import redis

from gpufeed.connect import Client, RedisTarget
from gpufeed.errors import ConfigError
from gpufeed.worker.commit import COMMIT_LUA
from gpufeed.worker.config import WorkerConfig

COMMIT_SHA = hashlib.sha1(COMMIT_LUA.encode()).hexdigest()  # the id Redis gives the script


@dataclass(frozen=True)
class Probe:
    rule: str  # the ACL command name: +xautoclaim, +script|load, ...
    key: str | None  # the key the command touches (needs a ~pattern), if any
    why: str
    args: tuple[str | int, ...]


def probes(config: WorkerConfig) -> list[Probe]:
    """Every command a worker with ``config`` runs, in a form that changes nothing.

    Group commands name a group that does not exist: Redis answers NOGROUP
    after the ACL check, and no consumer is created (a consumer made here would
    look like a worker that is already reading).
    """
    cfg = config
    src, out, dead, group = cfg.in_key, cfg.out_key, cfg.dead_key, cfg.group
    consumer = cfg.consumer_name(0)
    nogroup = f"gpufeed-access-check-{secrets.token_hex(8)}"
    found = [
        Probe("xgroup|create", src, "create the consumer group",
              ("XGROUP", "CREATE", src, nogroup, "not-an-id", "MKSTREAM")),
        Probe("xreadgroup", src, "read entries",
              ("XREADGROUP", "GROUP", nogroup, consumer, "COUNT", 1, "STREAMS", src, ">")),
        Probe("xautoclaim", src, "take over entries idle past the visibility timeout",
              ("XAUTOCLAIM", src, nogroup, consumer, 0, "0-0", "COUNT", 1)),
        Probe("xpending", src, "read delivery counts", ("XPENDING", src, nogroup)),
        Probe("xack", src, "acknowledge answered entries", ("XACK", src, nogroup, "0-0")),
        Probe("xrange", src, "copy a failed entry into its dead letter",
              ("XRANGE", src, "0-0", "0-0")),
        Probe("xadd", out, "write results", ("XADD", out, "NOMKSTREAM", "0-0", "src", "-")),
        Probe("xadd", dead, "write dead letters",
              ("XADD", dead, "NOMKSTREAM", "0-0", "src", "-")),
        Probe("xlen", out, "check that the result stream is a stream", ("XLEN", out)),
        Probe("xlen", dead, "check that the dead-letter stream is a stream", ("XLEN", dead)),
        Probe("xtrim", out, "bound the result stream (--out-maxlen)",
              ("XTRIM", out, "MAXLEN", -1)),
        Probe("xtrim", dead, "bound the dead-letter stream (--out-maxlen)",
              ("XTRIM", dead, "MAXLEN", -1)),
        Probe("script|load", None, "load the commit script", ("SCRIPT", "LOAD", COMMIT_LUA)),
        # No entries: the script runs and calls nothing; the keys are checked all the same.
        Probe("evalsha", src, "run the commit script",
              ("EVALSHA", COMMIT_SHA, 3, src, out, dead, group, consumer, 0, 0, 0, 0, 0)),
    ]  # fmt: skip
    # The lease on the consumer name (worker/lease.py): a key of the queue's no worker
    # uses, so that the probes touch nobody's lease.
    nobody = cfg.keys.lease_key(nogroup)
    found += [
        Probe("get", nobody, "read who holds the consumer name", ("GET", nobody)),
        Probe("set", nobody, "hold the consumer name", ("SET", nobody, "", "XX")),
        Probe("del", nobody, "let go of the consumer name", ("DEL", nobody)),
    ]
    if cfg.delete_acked:
        found.append(Probe("xdel", src, "delete answered entries (--delete-acked)",
                           ("XDEL", src, "0-0")))  # fmt: skip
    if cfg.metrics_port:
        found += [
            Probe("xlen", src, "report stream lengths (--metrics-port)", ("XLEN", src)),
            Probe("xinfo|groups", src, "report group lag (--metrics-port)",
                  ("XINFO", "GROUPS", src)),
            Probe("xinfo|consumers", src, "report consumers (--metrics-port)",
                  ("XINFO", "CONSUMERS", src, group)),
        ]  # fmt: skip
    # Each priority level's stream is read, claimed, acknowledged and committed alike.
    for stream in cfg.level_keys[1:]:
        found += [
            replace(
                p, key=stream, why=f"{p.why} (priority level {stream})",
                args=tuple(stream if a == src else a for a in p.args),
            )
            for p in found
            if p.key == src
        ]  # fmt: skip
    return found


def check_worker_access(config: WorkerConfig) -> None:
    """Connect as the worker will and run ``check_access``.

    Raises ``ConfigError`` for what waiting cannot fix: missing permissions, a
    cluster URL for a server that is not a cluster node. Connection errors
    (and a cluster not reachable yet) propagate, for the caller to retry.
    """
    target = config.redis
    try:
        client = target.connect(socket_timeout=10.0)
    except redis.exceptions.NoPermissionError as exc:  # redis-py reading the command table
        raise ConfigError(
            f"the Redis user lacks a permission a cluster client needs: {exc}"
        ) from exc
    except redis.RedisClusterException:
        _explain_cluster_failure(target)
        raise
    try:
        check_access(client, config)
        check_stream_types(client, config)
    finally:
        client.close()


def _explain_cluster_failure(target: RedisTarget) -> None:
    """redis-py reports any refused CLUSTER SLOTS as "cluster mode is not enabled";
    ask the node directly to tell a missing permission from a non-cluster server."""
    node = target.connect(node_only=True, socket_timeout=10.0)
    try:
        node.execute_command("CLUSTER", "SLOTS")
    except redis.exceptions.NoPermissionError as exc:
        raise ConfigError(
            f"the Redis user lacks +cluster|slots, which a cluster client needs: {exc}"
        ) from exc
    except redis.ResponseError as exc:
        raise ConfigError(
            f"{target.safe_url} names a cluster, but the server is not a cluster node: {exc}"
        ) from exc
    finally:
        node.close()


def check_stream_types(client: Client, config: WorkerConfig) -> None:
    """``ConfigError`` if a key the worker writes streams to holds something else.

    The commit script refuses such a key before writing anything; found here, it
    stops the worker at start with a line saying which key, not later in a loop
    of refused commits.
    """
    wrong = []
    for key in (*config.level_keys, config.out_key, config.dead_key):
        try:
            client.xlen(key)  # as the commit script checks: no permission beyond XLEN
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            wrong.append(f"{key} is not a stream")
    if wrong:
        raise ConfigError(
            "the queue's keys must be streams (or not exist yet): "
            + "; ".join(wrong)
            + ": rename or delete them"
        )


def check_access(client: Client, config: WorkerConfig) -> None:
    """Raise ``ConfigError`` naming every permission the worker lacks.

    Connection errors propagate (the caller waits for Redis and tries again).
    """
    missing: list[str] = []
    for probe in probes(config):
        try:
            client.execute_command(*probe.args)
        except redis.exceptions.NoPermissionError as exc:
            target = f" on {probe.key}" if probe.key else ""
            missing.append(f"+{probe.rule}{target} (to {probe.why}): {exc}")
        except redis.ResponseError:
            pass  # refused for its arguments: the permission itself is there
    if missing:
        raise ConfigError(
            "the Redis user lacks permissions the worker needs (see docs/scaling.md, "
            "'Least-privilege ACL users'):\n  " + "\n  ".join(missing)
        )
