"""A queue's names in Redis: ``gpufeed:{QUEUE}:in``, ``:out``, ``:dead``, reply streams and
the leases on consumer names.

Every key of a queue carries the hash tag ``{QUEUE}``, so on Redis Cluster
they live in one hash slot and the commit script may touch all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpufeed.errors import ConfigError

# A client's name goes into its reply streams' keys and into ACL key patterns:
# no glob characters, no ':' (which separates it from each client's tag).
CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


# Priority levels per queue: 0 (the plain input stream) up to MAX_LEVELS - 1.
MAX_LEVELS = 16


def check_client_name(name: str) -> str:
    if not CLIENT_NAME.fullmatch(name):
        raise ConfigError(f"client name {name!r}: 1 to 100 of A-Z a-z 0-9 . _ -")
    return name


def queue_key(queue: str, name: str) -> str:
    """The key ``gpufeed:{QUEUE}:NAME`` (in, out, dead, reply:..., or a * pattern)."""
    return f"gpufeed:{{{queue}}}:{name}"


@dataclass(frozen=True)
class QueueKeys:
    """The streams of queue ``queue``; the name is checked when made."""

    queue: str

    def __post_init__(self) -> None:
        if not self.queue or any(c in self.queue for c in "{} "):
            raise ConfigError(
                f"--queue: must be non-empty without braces or spaces, got {self.queue!r}"
            )

    @property
    def in_key(self) -> str:
        """Where producers XADD messages."""
        return queue_key(self.queue, "in")

    def level_key(self, level: int) -> str:
        """The input stream of priority level ``level``: ``in`` for 0 (the default, and
        the lowest), ``in:LEVEL`` above it; a higher level is served first."""
        if not 0 <= level < MAX_LEVELS:
            raise ConfigError(f"priority level {level}: must be between 0 and {MAX_LEVELS - 1}")
        return self.in_key if level == 0 else queue_key(self.queue, f"in:{level}")

    def level_keys(self, levels: int) -> list[str]:
        """The input streams of a queue with ``levels`` priority levels, lowest first."""
        return [self.level_key(k) for k in range(levels)]

    @property
    def out_key(self) -> str:
        """Where results go unless a message names its own ``reply_to``."""
        return queue_key(self.queue, "out")

    @property
    def dead_key(self) -> str:
        """Where bad input and messages delivered too often are copied, with the reason."""
        return queue_key(self.queue, "dead")

    @property
    def every_key(self) -> str:
        """The pattern of every key of the queue, reply streams included (for ACL rules)."""
        return queue_key(self.queue, "*")

    def lease_key(self, consumer: str) -> str:
        """Who holds consumer name ``consumer`` (worker/lease.py)."""
        return queue_key(self.queue, f"consumer:{consumer}")

    def reply_key(self, name: str) -> str:
        """A reply stream in the queue's hash slot, as a cluster needs:
        ``gpufeed:{QUEUE}:reply:NAME``."""
        return queue_key(self.queue, f"reply:{name}")

    def client_reply_key(self, name: str, tag: str) -> str:
        """The reply stream of one client named ``name``: ``gpufeed:{QUEUE}:reply:NAME:TAG``."""
        return self.reply_key(f"{check_client_name(name)}:{tag}")
