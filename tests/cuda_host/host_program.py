"""gpufeed's CUDA sources built as host C++ and run from Python (the ``cuda_host`` tests).

``build(ops)`` compiles exactly the program the GPU backends compile,
``table_program(ops)``, after ``cuda_host.h`` (the CUDA built-ins as host
C++20) and before ``launch.cpp`` (C entry points for the two kernels), with
the system's g++, and loads it with ctypes. Builds are cached by their source.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpufeed.gpu.cuda_runtime import OP_PARAMS_DTYPE
from gpufeed.ops import Op, table_program

HERE = Path(__file__).parent
CXX = os.environ.get("CXX", "g++")
# -Werror: a warning in a device function fails its test. An op need not use every
# parameter GPUFEED_OP gives it (docs/ops.md's example ignores params).
FLAGS = ("-std=c++20", "-O2", "-g", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra",
         "-Werror", "-Wno-unused-parameter")  # fmt: skip
CACHE = Path(tempfile.gettempdir()) / f"gpufeed-cuda-host-{os.getuid()}"
THREADS_PER_BLOCK = 256  # what the batched backend launches with
BATCH_TIMEOUT_S = 120.0


class CompilerMissing(Exception):
    """The cuda_host tests need a C++20 compiler; they fail, not skip, without one."""


def compiler() -> str:
    found = shutil.which(CXX)
    if found is None:
        raise CompilerMissing(
            f"the cuda_host tests compile gpufeed's CUDA sources as host C++20 and need "
            f"{CXX!r} on PATH (apt-get install g++, or set CXX)"
        )
    return found


@functools.cache
def compiler_version() -> str:
    """What the compiler says it is: a build made by another compiler is not reused."""
    done = subprocess.run([compiler(), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return done.stdout


def source_for(ops: Sequence[Op]) -> str:
    return "\n".join(
        ['#include "cuda_host.h"', table_program(ops), (HERE / "launch.cpp").read_text()]
    )


class HostParams:
    """The op table's ``OpParams`` array in host memory: each op's tensors where they
    are, so a test can change one while a kernel runs (a gate, say)."""

    def __init__(self, ops: Sequence[Op]) -> None:
        self.array = np.zeros(len(ops), OP_PARAMS_DTYPE)
        self.tensors: list[np.ndarray] = []
        for op_id, op in enumerate(ops):
            for k, tensor in enumerate(op.device_tensors()):
                kept = tensor if tensor.flags.c_contiguous else np.ascontiguousarray(tensor)
                self.tensors.append(kept)
                self.array["tensors"][op_id, k] = kept.ctypes.data
            dims = op.device_dims()
            self.array["dims"][op_id, : len(dims)] = dims

    @property
    def ptr(self) -> int:
        return int(self.array.ctypes.data)


class Launch:
    """A kernel launch running on host threads."""

    def __init__(self, lib: ctypes.CDLL, handle: int, source: str) -> None:
        self._lib, self._handle = lib, handle
        self._why_at_free = ""
        self._lines = source.splitlines()

    def join(self, timeout_s: float) -> bool:
        """True once every thread of the launch has ended (a freed launch has)."""
        return not self._handle or bool(self._lib.gpufeed_host_join(self._handle, timeout_s))

    @property
    def why(self) -> str:
        """Why the launch was aborted (a trap, a broken warp rule), or ""."""
        if not self._handle:
            return self._why_at_free
        buffer = ctypes.create_string_buffer(4096)
        self._lib.gpufeed_host_why(self._handle, buffer, len(buffer))
        why = buffer.value.decode(errors="replace")
        # Quote the program's lines the message names.
        quoted = {int(n): self._lines[int(n) - 1].strip() for n in re.findall(r"line (\d+)", why)
                  if 0 < int(n) <= len(self._lines)}  # fmt: skip
        return why + "".join(f"\n  line {n}: {text}" for n, text in sorted(quoted.items()))

    def free(self) -> None:
        """Ends the launch (it is aborted if still running) and frees it."""
        if self._handle:
            self._why_at_free = self.why
            self._lib.gpufeed_host_free(self._handle)
            self._handle = 0


class HostProgram:
    def __init__(self, path: Path, ops: Sequence[Op]) -> None:
        lib = self.lib = ctypes.CDLL(str(path))
        self.ops = list(ops)
        self.source = source_for(ops)
        p, u32 = ctypes.c_void_p, ctypes.c_uint32
        lib.gpufeed_host_batch.argtypes = [p, p, u32, u32, p, u32, ctypes.c_uint, ctypes.c_uint]
        lib.gpufeed_host_persistent.argtypes = [p, p, p, p, p, p, u32, u32, p, u32,
                                                ctypes.c_uint, ctypes.c_uint]  # fmt: skip
        lib.gpufeed_host_batch.restype = lib.gpufeed_host_persistent.restype = p
        lib.gpufeed_host_join.argtypes = [p, ctypes.c_double]
        lib.gpufeed_host_why.argtypes = [p, ctypes.c_char_p, ctypes.c_size_t]
        lib.gpufeed_host_why.restype = None
        lib.gpufeed_host_free.argtypes = [p]

    def batch(self, requests: np.ndarray, *, resident: int = 4) -> np.ndarray:
        """``gpufeed_batch`` over ``requests`` (n, slot_bytes): the result slots."""
        requests = np.ascontiguousarray(requests)
        n, slot_bytes = requests.shape
        results = np.zeros_like(requests)
        params = HostParams(self.ops)
        handle = self.lib.gpufeed_host_batch(
            requests.ctypes.data, results.ctypes.data, n, slot_bytes, params.ptr,
            len(self.ops), THREADS_PER_BLOCK, resident,
        )  # fmt: skip
        launch = Launch(self.lib, handle, self.source)
        # Waited for in slices from Python, so that a test's timeout can interrupt a
        # launch that hangs (a C++ wait would hold the interpreter until it ended).
        deadline = time.monotonic() + BATCH_TIMEOUT_S
        while not launch.join(0.1):
            if time.monotonic() > deadline:
                launch.free()  # aborts it
                raise AssertionError(f"gpufeed_batch did not finish in {BATCH_TIMEOUT_S} s")
        why = launch.why
        launch.free()
        if why:
            raise AssertionError(f"gpufeed_batch was aborted: {why}")
        return results

    def persistent(self, pointers: Sequence[int], capacity_log2: int, slot_bytes: int,
                   params: HostParams, blocks: int, threads: int) -> Launch:  # fmt: skip
        """Start ``gpufeed_persistent``; ``pointers`` are requests, results, state,
        control, sync and scratch, in the kernel's order."""
        handle = self.lib.gpufeed_host_persistent(
            *pointers, capacity_log2, slot_bytes, params.ptr, len(self.ops), blocks, threads
        )
        return Launch(self.lib, handle, self.source)


_loaded: dict[str, HostProgram] = {}


def build(ops: Sequence[Op]) -> HostProgram:
    """The host build of ``table_program(ops)``, compiled once per distinct source."""
    source = source_for(ops)
    header = (HERE / "cuda_host.h").read_text()
    key = hashlib.sha256(
        (compiler_version() + header + source + " ".join(FLAGS)).encode()
    ).hexdigest()[:16]
    if key in _loaded:
        return _loaded[key]
    library = CACHE / f"{key}.so"
    if not library.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            src = Path(work) / "program.cpp"
            src.write_text(source)
            done = subprocess.run(
                [compiler(), *FLAGS, "-I", str(HERE), "-o", str(Path(work) / "lib.so"), str(src)],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise AssertionError(f"the host build failed:\n{done.stderr[-6000:]}")
            os.replace(Path(work) / "lib.so", library)
    program = _loaded[key] = HostProgram(library, ops)
    return program
