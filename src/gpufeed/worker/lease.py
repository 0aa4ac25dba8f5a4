"""One consumer name, one live worker.

A worker's ingest processes read as ``<consumer>-<i>``, and a worker
restarted under the same name re-reads their pending entries: that is how a
crash loses nothing. Two live workers under one name would share those
pending lists, each re-reading and answering the other's entries. So a worker
holds a lease on its name, a key of the queue's
(``gpufeed:{QUEUE}:consumer:<name>``) whose value says who holds it: a random
token, the host, where on the host (boot and pid namespace), the supervisor's pid and a
renewal count. A thread of the supervisor's renews it every ``RENEW_S``; it
expires ``TTL_MS`` after the last renewal, and
a clean stop deletes it.

A worker that finds the name held takes it over at once if the holder is
dead for sure: on this host and in this pid namespace, its pid is gone (the common case: a worker
restarted after a crash, by hand, systemd or a container's restart policy).
Held from another host, it watches the value for ``STALE_AFTER_S``: a live
holder renews it meanwhile, and the worker exits 2 naming both and
``--consumer``; a value that did not change belongs to a dead worker, and is
taken over. Every change is a compare-and-set in one script call, so two
successors cannot both win.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from gpufeed.errors import ConfigError
from gpufeed.ring import process_alive
from gpufeed.worker.config import WorkerConfig

log = structlog.get_logger()

TTL_MS = 15_000
RENEW_S = 1.0
# Three renewals missed: the holder is not renewing.
STALE_AFTER_S = 3.5

# KEYS[1] the lease; ARGV: the value expected now ('' for none), the value to put
# ('' to delete), its time to live, and 'token' to expect only the value's first
# word. Returns the value found: the swap happened only if it was the one expected.
_SWAP = """
local found = redis.call('GET', KEYS[1]) or ''
local match = found == ARGV[1]
if ARGV[4] == 'token' and ARGV[1] ~= '' then
  match = string.sub(found, 1, #ARGV[1] + 1) == ARGV[1] .. ' '
end
if match then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1])
  else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
end
return found
"""


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    # Where on the host: the boot and the pid namespace. Containers that share a
    # host name (host networking) have pid namespaces of their own, where the
    # holder's pid means nothing.
    place: str
    pid: int
    renewals: int

    @classmethod
    def parse(cls, raw: str) -> Holder | None:
        parts = raw.split(" ")
        if len(parts) != 5 or not (parts[3].isdigit() and parts[4].isdigit()):
            return None  # not ours: treat as foreign and live
        return cls(parts[0], parts[1], parts[2], int(parts[3]), int(parts[4]))

    def __str__(self) -> str:
        return f"{self.token} {self.host} {self.place} {self.pid} {self.renewals}"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _place() -> str:
    """This boot and pid namespace, or ``-`` where the OS does not say (not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "-"


def _alive_here(pid: int) -> bool:
    """Whether ``pid`` in this pid namespace is a live gpufeed process other than this
    one. A container restarted under the same host name reuses small pids: this
    process, or another program, may have the dead holder's."""
    if pid == os.getpid() or not process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"gpufeed" in f.read()
    except OSError:
        # Exited since (not found, or ESRCH mid-read), or no /proc (macOS), where
        # that the pid is in use is all the OS says.
        return process_alive(pid)


class ConsumerLease:
    """The supervisor's lease on its consumer name."""

    def __init__(self, client: Any, config: WorkerConfig) -> None:
        self.client = client
        self.name = config.consumer_prefix
        self.key = config.keys.lease_key(self.name)
        self._swap = client.register_script(_SWAP)
        self.mine = Holder(secrets.token_hex(6), socket.gethostname(), _place(), os.getpid(), 0)
        self.lost = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def _cas(self, expected: str, new: str, *, token: bool = False) -> str:
        args = [expected, new, TTL_MS, "token" if token else ""]
        try:
            found = self._swap(keys=[self.key], args=args)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise ConfigError(
                f"{self.key} holds another type of value than a consumer-name lease: delete it"
            ) from exc
        return found.decode(errors="replace") if isinstance(found, bytes) else str(found)

    def acquire(self) -> None:
        """Take the name, or raise ``ConfigError`` naming the live worker that holds it."""
        found = self._cas("", str(self.mine))
        if not found:
            return
        holder = Holder.parse(found)
        if holder is not None and (holder.host, holder.place) == (self.mine.host, self.mine.place):
            if not _alive_here(holder.pid):
                log.info("consumer name taken over from a dead worker", consumer=self.name,
                         previous=holder.describe())  # fmt: skip
                return self._take_over(found)
            raise self._held_by(holder.describe())
        seen = found
        time.sleep(STALE_AFTER_S)  # a live holder renews meanwhile
        found = self._cas("", str(self.mine))
        if not found:
            return
        if found != seen:
            holder = Holder.parse(found)
            raise self._held_by(holder.describe() if holder else repr(found))
        log.info("consumer name taken over from a worker that stopped renewing it",
                 consumer=self.name, previous=found)  # fmt: skip
        self._take_over(found)

    def _take_over(self, found: str) -> None:
        if self._cas(found, str(self.mine)) != found:
            raise self._held_by("another worker that took it over just now")

    def _held_by(self, who: str) -> ConfigError:
        return ConfigError(
            f"consumer name {self.name!r} is held by a live worker ({who}); this one is "
            f"{self.mine.describe()}. Give each worker its own --consumer (or "
            "GPUFEED_CONSUMER) when several run on one host"
        )

    def renew(self) -> None:
        """Renew once; a lease found taken over sets ``lost``."""
        renewed = Holder(self.mine.token, self.mine.host, self.mine.place, self.mine.pid,
                         self.mine.renewals + 1)  # fmt: skip
        # By token, not by value: a server restarted from an older snapshot of its
        # data may hold an earlier renewal of ours.
        found = self._cas(self.mine.token, str(renewed), token=True)
        if not found:  # expired, or lost with the server's data: take it again if free
            found = self._cas("", str(renewed)) or self.mine.token + " "
        if found.startswith(self.mine.token + " "):
            self.mine = renewed
        else:
            self.lost = True

    def keep(self) -> None:
        """Renew every ``RENEW_S`` on a thread of its own, whatever the supervisor is
        busy with (a restart, a slow Redis); until ``release`` or the lease is lost."""

        def run() -> None:
            failing_since = 0.0
            while not self._stop.wait(RENEW_S) and not self.lost:
                try:
                    self.renew()
                    failing_since = 0.0
                except Exception as exc:  # Redis away: the lease outlives a short outage
                    now = time.monotonic()
                    if not failing_since or now - failing_since > 30:
                        log.warning("consumer name lease not renewed", error=str(exc))
                        failing_since = now

        self._keeper = threading.Thread(target=run, name="gpufeed-lease", daemon=True)
        self._keeper.start()

    def release(self) -> None:
        """Stop renewing and let go of the name (it expires on its own if Redis is away)."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5)
        if not self.lost:
            self._cas(self.mine.token, "", token=True)
