"""The built-in ops: ``echo``, ``vector_add`` and ``dense`` (``sha256`` has its own module).

Payload layouts (little-endian) are documented in ``docs/ops.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gpufeed.errors import ConfigError, InternalError
from gpufeed.ops.base import I64, U8, Bools, Op, cuda_file


def _as_float32(payloads: U8) -> npt.NDArray[np.float32]:
    """View the payload rows as float32 without copying when the rows allow it."""
    if payloads.shape[1] % 4:
        payloads = payloads[:, : payloads.shape[1] // 4 * 4]
    try:
        return payloads.view(np.float32)
    except ValueError:  # rows not contiguous: copy once
        return np.ascontiguousarray(payloads).view(np.float32)


class Echo(Op):
    """Returns the payload unchanged: the pipeline's own overhead, nothing else."""

    name = "echo"
    length_rule = "any length"
    cuda_function = "gpufeed_op_echo"

    def valid_lengths(self, lens: I64) -> Bools:
        return lens >= 0

    def output_lengths(self, lens: I64) -> I64:
        return lens.copy()

    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        return payloads.copy(), lens.copy()

    @property
    def cuda_source(self) -> str:
        return cuda_file("echo.cu")


class VectorAdd(Op):
    """Two float32 vectors of equal length k, one after the other → their sum (k float32)."""

    name = "vector_add"
    length_rule = "a multiple of 8 bytes: two float32 vectors of the same length"
    cuda_function = "gpufeed_op_vector_add"

    def valid_lengths(self, lens: I64) -> Bools:
        valid: Bools = lens % 8 == 0
        return valid

    def output_lengths(self, lens: I64) -> I64:
        return lens // 2

    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        floats = _as_float32(payloads)
        half = floats.shape[1] // 2
        k = (lens // 8)[:, None]
        j = np.arange(half)[None, :]
        second = np.take_along_axis(floats, np.minimum(k + j, floats.shape[1] - 1), axis=1)
        total = np.where(j < k, floats[:, :half] + second, np.float32(0))
        out = np.ascontiguousarray(total, dtype=np.float32).view(np.uint8)
        return out, lens // 2

    @property
    def cuda_source(self) -> str:
        return cuda_file("vector_add.cu")


DEFAULT_DENSE_IN = 8
DEFAULT_DENSE_OUT = 8


def default_dense_model() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The demo's model: fixed-seed weights, so every run and every machine agree."""
    rng = np.random.default_rng(20261122)
    w = rng.standard_normal((DEFAULT_DENSE_OUT, DEFAULT_DENSE_IN)).astype(np.float32)
    b = rng.standard_normal(DEFAULT_DENSE_OUT).astype(np.float32) * np.float32(0.1)
    return w / np.float32(np.sqrt(DEFAULT_DENSE_IN)), b


class Dense(Op):
    """One dense layer: float32 features x (in_dim) → relu(W·x + b) (out_dim float32).

    ``W`` has shape ``(out_dim, in_dim)`` and ``b`` shape ``(out_dim,)``; they
    come from an ``.npz`` file with arrays ``W`` and ``b``, or from
    :func:`default_dense_model`.
    """

    name = "dense"
    cuda_function = "gpufeed_op_dense"

    def __init__(
        self,
        w: npt.NDArray[Any] | None = None,
        b: npt.NDArray[Any] | None = None,
        *,
        source: str = "default model",
    ) -> None:
        if w is None or b is None:
            w, b = default_dense_model()
        w = np.ascontiguousarray(w, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ConfigError(
                f"dense model ({source}): W must be (out_dim, in_dim) and b (out_dim,), "
                f"got W {w.shape} and b {b.shape}"
            )
        self.w, self.b, self.source = w, b, source
        self.out_dim, self.in_dim = w.shape
        self.length_rule = f"exactly {4 * self.in_dim} bytes: {self.in_dim} float32 features"

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str]) -> Dense:
        """Load ``W`` and ``b`` from an ``.npz`` file (``numpy.savez(path, W=..., b=...)``)."""
        try:
            with np.load(Path(path), allow_pickle=False) as model:
                return cls(model["W"], model["b"], source=str(path))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot load dense model {path}: {exc}") from exc

    def valid_lengths(self, lens: I64) -> Bools:
        valid: Bools = lens == 4 * self.in_dim
        return valid

    def output_lengths(self, lens: I64) -> I64:
        return np.full_like(lens, 4 * self.out_dim)

    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        x = _as_float32(payloads)[:, : self.in_dim]
        y = np.maximum(x @ self.w.T + self.b, np.float32(0))
        out = np.ascontiguousarray(y, dtype=np.float32).view(np.uint8)
        return out, np.full(len(lens), 4 * self.out_dim, dtype=np.int64)

    def device_tensors(self) -> list[npt.NDArray[Any]]:
        return [self.w, self.b]

    def batch_gpu(self) -> DenseOnGpu:
        return DenseOnGpu(self)

    def device_dims(self) -> list[int]:
        return [self.in_dim, self.out_dim]

    @property
    def cuda_source(self) -> str:
        return cuda_file("dense.cu")


class DenseOnGpu:
    """``dense`` over a whole batch as one cuBLAS GEMM (``cupy.matmul``), with W and b
    put on the device once, by ``prepare``."""

    def __init__(self, op: Dense) -> None:
        self.op = op
        self._w: Any = None
        self._b: Any = None
        self._header: Any = None

    def prepare(self, cp: Any) -> None:
        """Upload W, b and the result header. Not lazily in the first batch: that
        upload would run on one lane's stream, and the batches on the other lanes'
        non-blocking streams would not wait for it."""
        op = self.op
        self._w, self._b = cp.asarray(op.w), cp.asarray(op.b)
        # Every result header: len = 4 * out_dim, status 0 (op and seq copied below).
        self._header = cp.asarray(np.frombuffer(np.uint32(4 * op.out_dim).tobytes(), np.uint8))

    def __call__(self, cp: Any, requests: Any, results: Any) -> None:
        op = self.op
        if self._w is None:
            raise InternalError("DenseOnGpu was called before prepare()")
        width = 4 * op.in_dim
        x = cp.ascontiguousarray(requests[:, 16 : 16 + width]).view(cp.float32)
        y = cp.maximum(x @ self._w.T + self._b, cp.float32(0))
        results[:, :16] = requests[:, :16]
        results[:, 0:4] = self._header
        results[:, 6:8] = 0
        results[:, 16 : 16 + 4 * op.out_dim] = cp.ascontiguousarray(y, dtype=cp.float32).view(
            cp.uint8
        )
