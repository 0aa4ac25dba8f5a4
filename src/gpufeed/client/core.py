"""What both clients hold: names and connection (``ClientCore``), and the futures
waiting for results (``Pending``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis
import structlog

from gpufeed.client.messages import Decode, OpSpec, outcome
from gpufeed.errors import ClientClosed, ConfigError, ReplyRefused, ResultError
from gpufeed.keys import QueueKeys

log = structlog.get_logger()

# Longest single blocking read of a reply stream: how late a reader notices ``close``.
READ_BLOCK_MS = 200
# What a lost connection raises.
LOST = (redis.ConnectionError, redis.TimeoutError)


def client_name() -> str:
    """A default client name: host and pid (the reply stream adds a random tag)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:100]


class ClientCore:
    """The queue's keys, the client's reply stream and its connection.

    Each client reads a stream of its own, ``gpufeed:{QUEUE}:reply:NAME:TAG``
    with a random tag, so two clients of one name (processes of one ACL user,
    say) never trim or delete each other's results.
    """

    def __init__(
        self, queue: str, op: OpSpec, name: str | None, connection: Any, connect: Callable[[], Any]
    ) -> None:
        self.keys = QueueKeys(queue)
        self.name = name if name is not None else client_name()
        self.reply_key = self.keys.client_reply_key(self.name, secrets.token_hex(6))
        self.op = op
        self._own = connection is None
        self._redis: Any = checked_connection(connection) if connection is not None else connect()
        self._trim_refused = False

    def trim_refused(self, exc: Exception) -> None:
        """Redis refused the reader's trim (a user without ``+xtrim``): the stream
        grows, results still come. Said once, not counted as a failed read, which
        would slow the reads down."""
        if not self._trim_refused:
            self._trim_refused = True
            log.warning("reply stream cannot be trimmed: it grows until the client closes",
                        client=self.name, stream=self.reply_key, error=repr(exc))  # fmt: skip


def checked_connection(connection: Any) -> Any:
    """A redis-py client the caller passed in, if results can be read through it."""
    if getattr(connection.get_encoder(), "decode_responses", False):
        raise ConfigError(
            "connection: a client made with decode_responses=True would turn results' "
            "bytes into text; pass one without it"
        )
    return connection


AnyFuture = concurrent.futures.Future[Any] | asyncio.Future[Any]


class Pending:
    """Futures waiting for their results, by input entry id; thread-safe.

    The reader can have a result before the submitter has its ``XADD``'s reply,
    so a result without a future waits in ``early`` for the submit under way
    to claim it. Entry ids are new, so once no submit is under way nothing can
    claim what is left there (the result of an ``XADD`` that redis-py retried
    after its reply was lost, say), and it is dropped.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._waiting: dict[bytes, tuple[AnyFuture, Decode]] = {}
        self._early: dict[bytes, bytes | ResultError] = {}
        self._submitting = 0
        self.closed = False

    def begin(self) -> None:
        """A submit starts; ``ClientClosed`` if the client is closed."""
        with self._lock:
            if self.closed:
                raise ClientClosed(f"client {self.name} is closed")
            self._submitting += 1

    def expect(self, entry_id: bytes, future: AnyFuture, decode: Decode) -> None:
        """``future`` settles with ``entry_id``'s result (at once if it is here)."""
        with self._lock:
            early = None if self.closed else self._early.pop(entry_id, None)
            if early is None and not self.closed:
                self._waiting[entry_id] = (future, decode)
        if self.closed:
            settle(future, ClientClosed(f"client {self.name} closed before the result"), None)
        elif early is not None:
            settle(future, early, decode, entry_id)

    def expect_all(
        self, replies: list[Any], make: Callable[[], AnyFuture], decode: Decode
    ) -> list[Any]:
        """A future for each reply of a pipeline of XADDs: the entry's result, or the
        error Redis answered that XADD with."""
        futures = []
        for reply in replies:
            future = make()
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                self.expect(reply, future, decode)
            futures.append(future)
        return futures

    def end(self) -> None:
        with self._lock:
            self._submitting -= 1
            if not self._submitting:
                self._early.clear()

    def deliver(self, src: bytes, value: bytes | ResultError) -> None:
        with self._lock:
            waiting = self._waiting.pop(src, None)
            if waiting is None:
                if self._submitting:
                    self._early[src] = value
                return
        settle(waiting[0], value, waiting[1], src)

    def deliver_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Settle the futures of a read's result entries. An entry without the input
        id it answers (written by something other than a worker) settles nothing."""
        for _, fields in entries:
            if b"src" in fields:
                self.deliver(*outcome(fields))

    def fail_waiting(self, exc: Exception) -> None:
        """Fail every future now waiting with ``exc``; later submits go on."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            settle(future, exc, None)

    def close(self) -> None:
        """Fail every future still waiting with ``ClientClosed``; later submits too."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, {}
            self._early.clear()
        for future, _ in waiting.values():
            settle(future, ClientClosed(f"client {self.name} closed before the result"), None)


def settle(future: AnyFuture, value: bytes | Exception, decode: Decode, src: bytes = b"") -> None:
    """Give ``future`` its result, or its error; nothing if it was cancelled.

    A result that ``decode`` cannot take (the worker serves another version of
    the op, say) fails its own future only.
    """
    if future.done():
        return
    try:
        if isinstance(value, Exception):
            future.set_exception(value)
            return
        try:
            result = decode(value) if decode is not None else value
        except ValueError as exc:
            why = f"a result of {len(value)} bytes does not fit the op's output: {exc}"
            future.set_exception(ResultError(why, src))
            return
        future.set_result(result)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled meanwhile, from another thread


def reader_pause(failures: int, exc: Exception, name: str) -> float:
    """How long a reader waits after its ``failures``-th failure in a row, logged
    (the first, then every 30th) unless it is a lost connection redis-py reports."""
    if not isinstance(exc, LOST) and (failures == 1 or failures % 30 == 0):
        log.warning("reply reader failed; retrying", client=name, error=repr(exc))
    return min(1.0, 0.05 * 2.0 ** min(failures, 10))


def read_refused(core: ClientCore, exc: Exception) -> ReplyRefused:
    """What fails the futures waiting when Redis refuses to let the client read its
    reply stream (NOPERM): no result can arrive until the user's rules change, and
    a timeout would not say why. (A refused trim costs length only: see
    ``ClientCore.trim_refused``.)"""
    return ReplyRefused(
        f"Redis refused reading the reply stream {core.reply_key}: {exc}. A producer "
        f"user needs `gpufeed acl producer --reply NAME` and the client name=NAME "
        f"(this client's name is {core.name!r})"
    )
