"""Tensor ops: an op declared by what it takes and gives, not by bytes.

A tensor op has one input (a tensor of fixed shape, a tensor whose first
dimension varies up to a maximum, or UTF-8 text up to a length) and one
output tensor of fixed shape, and one function over a whole batch::

    from gpufeed.ops import Tensor, TensorOp, Text

    def double(x):                      # x: (n, 4) float32
        return x * 2

    double_op = TensorOp("double", double, Tensor("float32", (4,)), Tensor("float32", (4,)))

From the declaration come the length rule and its error message, the
validation and the result sizes; payloads are the input's raw little-endian
bytes (C order), results the output's. The function gets:

* a fixed-shape input as an array of shape ``(n, *shape)``: on the ``cpu``
  backend a read-only NumPy view of the slots (no copy), on ``batched`` a
  CuPy array on the device;
* a variable first dimension as ``(x, rows)``: ``x`` of shape
  ``(n, max_rows, *rest)`` with the rows past each message's zeroed, and
  ``rows`` the count of each;
* text as a list of ``str``.

It returns an array of shape ``(n, *output.shape)``: NumPy, CuPy, or (with
``framework="torch"``) a PyTorch tensor, which then also gets its input as a
tensor (through DLPack on the device). The ``persistent`` backend needs a
device function and refuses tensor ops at start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gpufeed.errors import ConfigError, DeviceLost, InvalidPayload
from gpufeed.ops.base import I64, U8, Bools, Op, failure_reason

FRAMEWORKS = ("numpy", "torch")
# What ``TensorOp.samples`` makes sentences of.
_WORDS = np.array([
    "a", "an", "the", "model", "queue", "batch", "stream", "worker", "result", "message",
    "redis", "gpu", "fast", "slow", "small", "large", "red", "blue", "green", "quick", "lazy",
    "fox", "dog", "cat", "bird", "river", "city", "night", "day", "runs", "jumps", "reads",
    "writes", "sends", "waits", "computes", "returns", "learns", "sees", "finds", "keeps",
    "over", "under", "into", "from", "with", "without", "before", "after", "while", "because",
    "and", "or", "but",
])  # fmt: skip
# A result slot's error status, as the device contract has it (cuda/gpufeed_op.cuh).
STATUS_ERROR = 1


@dataclass(frozen=True)
class Tensor:
    """A tensor of ``dtype`` and ``shape``; ``shape[0] == -1`` with ``max_rows``
    makes the first dimension vary from 1 to ``max_rows``."""

    dtype: Any
    shape: tuple[int, ...]
    max_rows: int | None = None

    def __post_init__(self) -> None:
        dtype = np.dtype(self.dtype)
        if dtype.kind not in "biufc" or dtype.itemsize == 0:
            raise ConfigError(f"tensor dtype {self.dtype!r}: a fixed-size numeric type")
        object.__setattr__(self, "dtype", dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        rest = self.shape[1:] if self.variable else self.shape
        if any(d < 1 for d in rest):
            raise ConfigError(f"tensor shape {self.shape}: dimensions must be >= 1 "
                              "(the first may be -1 with max_rows)")  # fmt: skip
        if self.variable and (self.max_rows is None or self.max_rows < 1):
            raise ConfigError(f"tensor shape {self.shape}: a first dimension of -1 needs max_rows")

    @property
    def variable(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of the first dimension (variable), or of the whole tensor."""
        rest = self.shape[1:] if self.variable else self.shape
        return int(self.dtype.itemsize) * math.prod(rest)

    @property
    def max_bytes(self) -> int:
        return self.row_bytes * (self.max_rows or 1) if self.variable else self.row_bytes

    def describe(self) -> str:
        if self.variable:
            dims = ", ".join(["rows", *map(str, self.shape[1:])])
            return (f"a multiple of {self.row_bytes} bytes, at most {self.max_bytes}: "
                    f"{self.dtype.name} ({dims}), 1 to {self.max_rows} rows")  # fmt: skip
        return f"exactly {self.row_bytes} bytes: {self.dtype.name} {self.shape}"


@dataclass(frozen=True)
class Text:
    """UTF-8 text of at most ``max_bytes`` bytes."""

    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ConfigError(f"text of at most {self.max_bytes} bytes: max_bytes must be >= 1")

    def describe(self) -> str:
        return f"UTF-8 text of at most {self.max_bytes} bytes"


class TensorOp(Op):
    """An op from a batch function and its input and output declarations."""

    cuda_function = ""  # no device function: the batched backend runs ``batch_gpu``

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        input: Tensor | Text,
        output: Tensor,
        *,
        framework: str = "numpy",
    ) -> None:
        if framework not in FRAMEWORKS:
            raise ConfigError(f"tensor op {name!r}: framework must be one of {FRAMEWORKS}")
        if not isinstance(output, Tensor) or output.variable:
            raise ConfigError(f"tensor op {name!r}: the output must be a Tensor of fixed shape")
        self.name = name
        self.fn = fn
        self.input = input
        self.output = output
        self.framework = framework
        self.length_rule = input.describe()

    # -- lengths -------------------------------------------------------------------------

    def valid_lengths(self, lens: I64) -> Bools:
        spec = self.input
        if isinstance(spec, Text):
            valid: Bools = lens <= spec.max_bytes
        elif spec.variable:
            valid = (lens > 0) & (lens % spec.row_bytes == 0) & (lens <= spec.max_bytes)
        else:
            valid = lens == spec.row_bytes
        return valid

    def output_lengths(self, lens: I64) -> I64:
        return np.full(len(lens), self.output.row_bytes, dtype=np.int64)

    @property
    def cuda_source(self) -> str:
        return ""

    # -- the batch -----------------------------------------------------------------------

    def arguments(self, payloads: U8, lens: I64) -> tuple[Any, ...]:
        """What ``fn`` gets for these payload rows, on the host."""
        args = self.host_arguments(payloads, lens)
        return tuple(a if isinstance(a, list) else self._framework_in(a) for a in args)

    def host_arguments(self, payloads: U8, lens: I64) -> tuple[Any, ...]:
        """The arguments as NumPy arrays (text as a list of ``str``)."""
        spec = self.input
        if isinstance(spec, Text):
            return ([_text(row[:k]) for row, k in zip(payloads, lens.tolist(), strict=True)],)
        if spec.variable:
            assert spec.max_rows is not None
            width = spec.max_bytes
            rows = lens // spec.row_bytes
            keep = np.arange(width) < lens[:, None]
            padded = np.where(keep, payloads[:, :width], 0).astype(np.uint8)
            x = padded.view(spec.dtype).reshape(len(lens), spec.max_rows, *spec.shape[1:])
            return (x, rows)
        return (_view(payloads[:, : spec.row_bytes], spec.dtype).reshape(len(lens), *spec.shape),)

    def check_capacity(self, payload_capacity: int) -> str | None:
        spec = self.input
        if isinstance(spec, Tensor) and spec.variable and spec.max_bytes > payload_capacity:
            return (
                f"op {self.name!r} takes up to {spec.max_bytes} bytes ({spec.max_rows} rows), "
                f"more than the {payload_capacity}-byte payload area of a slot: raise "
                "--slot-bytes or lower max_rows"
            )
        return super().check_capacity(payload_capacity)

    def _framework_in(self, x: npt.NDArray[Any]) -> Any:
        if self.framework != "torch":
            return x
        torch = _torch()
        with warnings.catch_warnings():  # a read-only view of the ring: fn must not write it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x)

    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        n = len(lens)
        y = np.asarray(to_host(self.fn(*self.arguments(payloads, lens))))
        out = self.output
        if y.shape != (n, *out.shape):
            raise ValueError(f"tensor op {self.name!r} returned shape {y.shape}, "
                             f"expected {(n, *out.shape)}")  # fmt: skip
        data = np.ascontiguousarray(y, dtype=out.dtype).reshape(n, -1).view(np.uint8)
        return data, self.output_lengths(lens)

    def batch_gpu(self) -> TensorOnGpu:
        return TensorOnGpu(self)

    def samples(self, n: int, seed: int = 0) -> list[Any]:
        """``n`` valid inputs, reproducible from ``seed``: sentences of plain words for
        text, random arrays for tensors (``gpufeed bench model`` sends them)."""
        rng = np.random.default_rng(seed)
        spec = self.input
        if isinstance(spec, Text):
            words = rng.choice(_WORDS, size=(n, 24))
            counts = rng.integers(4, 25, size=n)
            texts = (" ".join(row[:k]) for row, k in zip(words, counts, strict=True))
            return [t.encode()[: spec.max_bytes].decode(errors="ignore") for t in texts]
        rows = rng.integers(1, (spec.max_rows or 1) + 1, size=n)
        out = []
        for k in rows.tolist():
            shape = (k, *spec.shape[1:]) if spec.variable else spec.shape
            if spec.dtype.kind == "f":
                x = rng.standard_normal(shape).astype(spec.dtype)
            else:
                x = rng.integers(0, 2 if spec.dtype.kind == "b" else 100, size=shape)
                x = x.astype(spec.dtype)
            out.append(x)
        return out


class TensorOnGpu:
    """A tensor op on the batched backend: the batch function over device arrays,
    then complete result slots (header and payload), as the batch kernel writes."""

    def __init__(self, op: TensorOp) -> None:
        self.op = op

    def __call__(self, cp: Any, requests: Any, results: Any) -> None:
        """Answer every request slot; a batch whose function raises is halved until
        the failing messages stand alone, each then answered with the error (as the
        cpu backend's ``compute_isolating`` does). CUDA's own errors are the
        backend's to judge (a lost context, or a batch to retry) and pass through."""
        try:
            self._answer(cp, requests, results)
        except Exception as exc:
            if _device_error(cp, exc):
                raise
            n = len(requests)
            if n > 1:
                half = n // 2
                self(cp, requests[:half], results[:half])
                self(cp, requests[half:], results[half:])
                return
            text = failure_reason(self.op, exc).encode()[: results.shape[1] - 16]
            results[:, :16] = requests[:, :16]
            results[:, 0:4] = cp.asarray(_le_bytes("<u4", len(text)))
            results[:, 6:8] = cp.asarray(_le_bytes("<u2", STATUS_ERROR))
            results[0, 16 : 16 + len(text)] = cp.asarray(np.frombuffer(text, np.uint8))

    def _answer(self, cp: Any, requests: Any, results: Any) -> None:
        op, spec, out = self.op, self.op.input, self.op.output
        n = len(requests)
        lens = requests[:, 0:4].copy().view(np.dtype("<u4")).ravel().astype(np.int64)
        if isinstance(spec, Text) or spec.variable:
            # Text decodes on the host; padding needs the lengths: both from a host copy.
            host = cp.asnumpy(requests[:, 16 : 16 + spec.max_bytes])
            args = tuple(
                a if isinstance(a, list) else self._on_device(cp, cp.asarray(a))
                for a in op.host_arguments(host, cp.asnumpy(lens))
            )
        else:
            x = cp.ascontiguousarray(requests[:, 16 : 16 + spec.row_bytes])
            args = (self._on_device(cp, x.view(spec.dtype).reshape(n, *spec.shape)),)
        with _torch_on(cp, op.framework):
            y = op.fn(*args)
            if hasattr(y, "detach"):  # a torch tensor: on the device through DLPack
                y = y.detach().contiguous()
                y = cp.from_dlpack(y) if y.is_cuda else cp.asarray(y.numpy())
            y = cp.ascontiguousarray(cp.asarray(y), dtype=out.dtype)
            if y.shape != (n, *out.shape):
                raise ValueError(f"tensor op {op.name!r} returned shape {y.shape}, "
                                 f"expected {(n, *out.shape)}")  # fmt: skip
            results[:, :16] = requests[:, :16]
            results[:, 0:4] = cp.asarray(_le_bytes("<u4", out.row_bytes))
            results[:, 6:8] = 0
            results[:, 16 : 16 + out.row_bytes] = y.reshape(n, -1).view(cp.uint8)

    def _on_device(self, cp: Any, x: Any) -> Any:
        return _torch_from(x) if self.op.framework == "torch" else x


def _le_bytes(dtype: str, value: int) -> npt.NDArray[np.uint8]:
    """A slot header field's little-endian bytes (packing/layout.py)."""
    return np.array([value], dtype).view(np.uint8)


def _device_error(cp: Any, exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA's (CuPy's runtime or driver error, PyTorch's), not the
    function's own."""
    cuda = getattr(cp, "cuda", None)
    kinds = tuple(
        k
        for k in (
            getattr(getattr(cuda, "runtime", None), "CUDARuntimeError", None),
            getattr(getattr(cuda, "driver", None), "CUDADriverError", None),
        )
        if isinstance(k, type)
    )
    return (isinstance(exc, (DeviceLost, *kinds)) or "CUDA error" in str(exc)
            or type(exc).__name__ == "OutOfMemoryError")  # fmt: skip


@contextlib.contextmanager
def _torch_on(cp: Any, framework: str) -> Iterator[None]:
    """Where the op uses PyTorch on a GPU: its kernels on the current CuPy stream
    (the batch's lane). The lane's copies of its input and output are then
    ordered with them, and PyTorch's caching allocator, which reuses a block
    only for work on the stream it was allocated on, cannot hand the output's
    memory to the next batch before the lane has copied it out.

    A torch op imports torch here, before its first batch: an op that imports
    it inside its function would otherwise run that batch on torch's default
    stream. Other ops are looked at only once they have imported torch."""
    torch = _torch() if framework == "torch" else sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        yield
        return
    # The lane belongs to the device this process serves (--device N). Torch files
    # an external stream under its own current device unless told, and kernels
    # queued on another device's stream fail; making that device torch's current
    # one too puts a model the function places on "cuda" where its batches are.
    device = cp.cuda.Device().id
    lane = torch.cuda.ExternalStream(cp.cuda.get_current_stream().ptr, device=device)
    with torch.cuda.device(device), torch.cuda.stream(lane):
        yield


def _text(raw: U8) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def _view(rows: U8, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``rows`` as ``dtype`` without a copy where the rows allow it."""
    try:
        return rows.view(dtype)
    except ValueError:  # rows not contiguous along the last axis: copy once
        return np.ascontiguousarray(rows).view(dtype)


def to_host(y: Any) -> Any:
    """A batch function's result as something NumPy takes: torch tensors and CuPy
    arrays come back to the host."""
    if hasattr(y, "detach"):  # torch
        return y.detach().cpu().numpy()
    if type(y).__module__.startswith("cupy"):
        return y.get()
    return y


def _torch() -> Any:
    """PyTorch, for ops that ask for it (not a dependency of gpufeed's own)."""
    return importlib.import_module("torch")


def _torch_from(x: Any) -> Any:
    return _torch().from_dlpack(x)
