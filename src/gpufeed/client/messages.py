"""What the clients write and how they read what comes back (the wire format of
docs/architecture.md §2)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import redis

from gpufeed.errors import ConfigError, ResultError, ResultExpired
from gpufeed.keys import QueueKeys
from gpufeed.ops.base import Op
from gpufeed.ops.tensor import TensorOp

# What a message's data may be given as: bytes, text (UTF-8), or a NumPy array
# (its little-endian bytes in C order, as a tensor op reads them).
Payload = bytes | bytearray | memoryview | str | np.ndarray
# An op by name, or the op itself: a tensor op's results then come back as arrays.
OpSpec = str | Op | None
Decode = Callable[[bytes], Any] | None
# Longest single blocking read of a reply stream: how late a reader notices ``close``.
READ_BLOCK_MS = 200
# What a lost connection raises; a reader retries after a pause.
LOST = (redis.ConnectionError, redis.TimeoutError)


def client_name() -> str:
    """A reply-stream name no other client will pick: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def message(
    data: Payload,
    reply_to: str,
    *,
    op: OpSpec = None,
    cid: str | bytes | None = None,
    deadline_ms: int | None = None,
) -> dict[str, Any]:
    """The fields of one input entry."""
    if isinstance(data, np.ndarray):
        little = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
        data = np.ascontiguousarray(data, dtype=little).tobytes()
    elif isinstance(data, str):
        data = data.encode()
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise ConfigError(f"data must be bytes or str, got {type(data).__name__}")
    fields: dict[str, Any] = {"data": data, "reply_to": reply_to}
    if op is not None:
        fields["op"] = op.name if isinstance(op, Op) else op
    if cid is not None:
        fields["cid"] = cid
    if deadline_ms is not None:
        fields["deadline_ms"] = str(int(deadline_ms))
    return fields


def messages(
    items: Iterable[Payload],
    reply_to: str,
    *,
    op: OpSpec,
    cids: Sequence[str | bytes] | None,
    deadline_ms: int | None,
) -> list[dict[str, Any]]:
    """The fields of each of ``items``' entries, for ``submit_many``."""
    batch = list(items)
    if cids is not None and len(cids) != len(batch):
        raise ValueError(f"{len(cids)} cids for {len(batch)} messages")
    return [
        message(data, reply_to, op=op, cid=None if cids is None else cids[i],
                deadline_ms=deadline_ms)
        for i, data in enumerate(batch)
    ]  # fmt: skip


class ClientCore:
    """What both clients hold: the queue's keys, the reply stream's name, the
    default op and the connection (their own, or the caller's, checked)."""

    def __init__(
        self, queue: str, op: OpSpec, name: str | None, connection: Any, connect: Callable[[], Any]
    ) -> None:
        self.keys = QueueKeys(queue)
        self.name = name or client_name()
        self.reply_key = self.keys.reply_key(self.name)
        self.op = op
        self._own = connection is None
        self._redis: Any = checked_connection(connection) if connection is not None else connect()


def outcome(fields: dict[bytes, bytes]) -> tuple[bytes, bytes | ResultError]:
    """A result entry's input id, and its data, or the error it stands for."""
    src = fields[b"src"]
    status = fields.get(b"status", b"error")
    if status == b"ok":
        return src, fields.get(b"data", b"")
    reason = fields.get(b"error", b"").decode(errors="replace")
    kind = ResultExpired if status == b"expired" else ResultError
    return src, kind(reason or f"status {status.decode(errors='replace')}", src,
                     fields.get(b"cid"))  # fmt: skip


def stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an XREAD reply on one stream: RESP2 ``[[key, entries]]`` or
    RESP3 ``{key: [entries]}``."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
    return [(entry_id, fields) for entries in streams for entry_id, fields in entries]


def checked_connection(connection: Any) -> Any:
    """A redis-py client the caller passed in, if results can be read through it."""
    if getattr(connection.get_encoder(), "decode_responses", False):
        raise ConfigError(
            "connection: a client made with decode_responses=True would turn results' "
            "bytes into text; pass one without it"
        )
    return connection


def decoder(op: OpSpec) -> Decode:
    """How a result's data comes back: as an array of a tensor op's output, or bytes."""
    if not isinstance(op, TensorOp):
        return None
    dtype, shape = op.output.dtype, op.output.shape
    return lambda data: np.frombuffer(data, dtype).reshape(shape)


def settle(future: Any, value: bytes | ResultError, decode: Decode) -> None:
    """Give ``future`` (concurrent or asyncio) its result, or its error."""
    if isinstance(value, ResultError):
        future.set_exception(value)
    else:
        future.set_result(decode(value) if decode is not None else value)
