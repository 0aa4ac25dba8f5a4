"""``gpufeed acl``: ACL rules for a least-privilege worker or producer user.

The worker's rules grant exactly the commands a worker runs (its start-up
check, ``worker/access.py``, tries each of them) on the keys of one queue, or
of every queue.
"""

from __future__ import annotations

from gpufeed.errors import ConfigError
from gpufeed.keys import QueueKeys, check_client_name

# What a worker runs: reading and answering (the commit script's commands are checked
# one by one inside it, XLEN among them), plus the read-only figures of --metrics-port.
WORKER_COMMANDS = (
    "ping", "xgroup|create", "xreadgroup", "xautoclaim", "xpending", "xack", "xrange",
    "xadd", "xtrim", "xdel", "script|load", "evalsha",
    "xlen", "exists", "xinfo|groups", "xinfo|consumers",
)  # fmt: skip
# The lease on the worker's consumer name (worker/lease.py), run in a script: string
# commands, allowed on the lease keys alone by an ACL selector (Redis 7).
LEASE_COMMANDS = ("get", "set", "del")
# What a cluster client runs besides: redis-py reads the slot map and command table.
CLUSTER_COMMANDS = ("cluster|slots", "command")


def acl_rules(
    role: str, queue: str, *, reply: str | None = None, cluster: bool = False
) -> list[str]:
    """ACL SETUSER rules (after the user name) for a least-privilege ``role``.

    ``worker``: every key of the queue, ``gpufeed:{QUEUE}:*``, which covers the
    reply streams producers name ``gpufeed:{QUEUE}:reply:NAME``. ``producer``:
    XADD to the input streams only (``in`` and every priority level's ``in:*``), and
    reading, trimming and deleting its own reply streams:
    ``gpufeed:{QUEUE}:reply:REPLY`` and the ``REPLY:*`` ones of ``gpufeed.Client(name=REPLY)``.
    ``queue`` may be ``*`` for every queue. Add ``on``, ``>password`` and so on.
    """
    keys = QueueKeys(queue)
    base = ["resetkeys", "resetchannels", "-@all", "+ping"]
    extra = [f"+{c}" for c in CLUSTER_COMMANDS] if cluster else []
    if role == "worker":
        lease = " ".join([*(f"+{c}" for c in LEASE_COMMANDS), f"~{keys.lease_key('*')}"])
        return [*base, *(f"+{c}" for c in WORKER_COMMANDS[1:]), *extra, f"~{keys.every_key}",
                f"({lease})"]  # fmt: skip
    if role == "producer":
        # The input stream of every priority level: in, in:1, in:2 ...
        rules = [*base, "+xadd", *extra, f"%W~{keys.in_key}", f"%W~{keys.in_key}:*"]
        if reply:
            # Read its results, trim what it read, delete the stream when done
            # (gpufeed.Client does all three). A selector, so that DEL reaches no other key.
            # Its clients' streams are NAME:TAG; NAME itself serves a producer that
            # names its reply stream by hand.
            mine = keys.reply_key(check_client_name(reply))
            rules += [f"(+xread +xrange +xrevrange +xlen +xtrim +del ~{mine} ~{mine}:*)"]
        return rules
    raise ConfigError(f"role must be worker or producer, got {role!r}")
