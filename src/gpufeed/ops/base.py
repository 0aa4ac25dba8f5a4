"""The op contract: what one kind of message computation must provide.

An op sees a whole batch at once: ``payloads`` is an ``(n, payload_capacity)``
uint8 array (one row per message; only the first ``lens[i]`` bytes of row
``i`` are the message) and ``lens`` an int64 array. It returns ``(out,
out_lens)`` in the same shape convention. Validation happens before a message
reaches an op, so ``reference`` may assume every length passed
``valid_lengths``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from gpufeed.errors import InvalidPayload

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def cuda_file(filename: str) -> str:
    """Text of a CUDA source shipped in ``gpufeed/ops/cuda``."""
    return resources.files("gpufeed.ops").joinpath("cuda", filename).read_text()


class Op(ABC):
    """One message computation: validation, sizes, NumPy reference, CUDA source.

    Subclasses set:

    * ``name``: what producers put in a message's ``op`` field;
    * ``length_rule``: the accepted payload lengths in words, used verbatim in
      the error result of a message with a wrong length;
    * ``cuda_function``: the name of the device function in ``cuda_source``,
      with the signature of ``GPUFEED_OP`` in ``cuda/gpufeed_op.cuh``.
    """

    name: str
    length_rule: str
    cuda_function: str

    @abstractmethod
    def valid_lengths(self, lens: I64) -> Bools:
        """Which payload lengths this op accepts."""

    @abstractmethod
    def output_lengths(self, lens: I64) -> I64:
        """Result length for each (valid) payload length."""

    @abstractmethod
    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        """The op over a whole batch, in NumPy: the CPU backend and the GPU tests' oracle."""

    @property
    @abstractmethod
    def cuda_source(self) -> str:
        """CUDA C++ source defining ``cuda_function`` (a ``GPUFEED_OP``)."""

    def cpu(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        """What the CPU backend runs; the reference unless an op has a faster CPU path."""
        return self.reference(payloads, lens)

    def device_tensors(self) -> list[npt.NDArray[Any]]:
        """Arrays the device function reads through ``OpParams.tensors`` (up to 4)."""
        return []

    def device_dims(self) -> list[int]:
        """Integers the device function reads through ``OpParams.dims`` (up to 4)."""
        return []

    def batch_gpu(self) -> Callable[[Any, Any, Any], None] | None:
        """An optional whole-batch GPU path for the batched backend; None: the device function.

        It is called as ``path(cupy, requests, results)`` with two CuPy uint8
        arrays of shape ``(n, slot_bytes)`` in device memory, on the stream
        CuPy has current, and must write complete result slots (header and
        payload), like the batch kernel. If it has a ``prepare(cupy)`` method,
        the backend calls it once at start-up, before any batch: that is where
        constants go to the device (every stream sees them, because the
        backend synchronises the device after it). The persistent kernel
        always uses the device function.
        """
        return None

    def check_capacity(self, payload_capacity: int) -> str | None:
        """Why this op cannot work with slots of ``payload_capacity`` bytes, or None.

        The worker refuses to start on such a configuration instead of failing
        every message.
        """
        lens = np.arange(payload_capacity + 1, dtype=np.int64)
        valid = self.valid_lengths(lens)
        if not valid.any():
            return f"op {self.name!r} accepts no payload of at most {payload_capacity} bytes"
        out = self.output_lengths(lens[valid])
        if int(out.max()) > payload_capacity:
            return (
                f"op {self.name!r} can produce {int(out.max())}-byte results, more than the "
                f"{payload_capacity}-byte payload area of a slot"
            )
        return None

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def failure_reason(op: Op, exc: BaseException) -> str:
    """The error result's text for a message whose op raised ``exc`` on it alone:
    a payload the op refused says why in its own words, anything else is the
    exception as Python shows it."""
    if isinstance(exc, InvalidPayload):
        return f"op {op.name!r}: {exc}"
    return f"op {op.name!r} failed: {exc!r}"
