"""What the clients write and how they read what comes back (the wire format of
docs/architecture.md §2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from gpufeed.errors import ConfigError, ResultError, ResultExpired
from gpufeed.ops.base import Op
from gpufeed.ops.tensor import Tensor, TensorOp

# What a message's data may be given as: bytes, text (UTF-8), or a NumPy array
# (its little-endian bytes in C order, as a tensor op reads them).
Payload = bytes | bytearray | memoryview | str | np.ndarray
# An op by name, or the op itself: a tensor op's results then come back as arrays.
OpSpec = str | Op | None
Decode = Callable[[bytes], Any] | None


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
        data = array_bytes(data, op)
    elif isinstance(data, str):
        data = data.encode()
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise ConfigError(f"data must be bytes, str or a NumPy array, got {type(data).__name__}")
    fields: dict[str, Any] = {"data": data, "reply_to": reply_to}
    if op is not None:
        fields["op"] = op.name if isinstance(op, Op) else op
    if cid is not None:
        fields["cid"] = cid
    if deadline_ms is not None:
        fields["deadline_ms"] = str(int(deadline_ms))
    return fields


def array_bytes(data: np.ndarray, op: OpSpec) -> bytes:
    """An array's little-endian bytes in C order; checked against the input of a
    tensor op given as itself (by name the client cannot know it)."""
    if isinstance(op, TensorOp) and isinstance(op.input, Tensor):
        spec = op.input
        if data.dtype.kind != spec.dtype.kind or data.dtype.itemsize != spec.dtype.itemsize:
            raise ConfigError(f"op {op.name!r} takes {spec.dtype.name}, got {data.dtype.name}")
        rest = spec.shape[1:] if spec.variable else spec.shape
        shape_ok = data.shape[1:] == rest and 1 <= data.shape[0] <= (spec.max_rows or 0) \
            if spec.variable else data.shape == spec.shape  # fmt: skip
        if not shape_ok:
            raise ConfigError(f"op {op.name!r} takes {spec.describe()}; got shape {data.shape}")
    little = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
    return np.ascontiguousarray(data, dtype=little).tobytes()


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


def decoder(op: OpSpec) -> Decode:
    """How a result's data comes back: as an array of a tensor op's output, or bytes."""
    if not isinstance(op, TensorOp):
        return None
    dtype, shape = op.output.dtype, op.output.shape
    return lambda data: np.frombuffer(data, dtype).reshape(shape).copy()
