"""The device code compiles, without a GPU: every op table the worker can build, with
nvcc (the CUDA toolkit's compiler) and with NVRTC (the run-time compiler CuPy uses,
which sees none of the system headers nvcc does)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufeed.errors import ConfigError
from gpufeed.ops import BUILTINS, Echo, OpTable, table_program

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from user_ops import trap_echo

ARCHS = ("sm_75", "sm_90")  # the oldest CUDA 13 builds for, and H100/H200


def tables() -> dict[str, OpTable]:
    found = {name: OpTable.for_worker(name, 240) for name in sorted(BUILTINS)}
    found["trap_echo"] = OpTable([trap_echo, *OpTable.for_worker("echo", 240).ops], 240)
    return found


def find_nvrtc() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (a test dependency), or the system's."""
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations or [] if spec else []:
        for lib in sorted(Path(root).glob("*/lib/libnvrtc.so*")):
            if "builtins" not in lib.name:
                return str(lib)
    return ctypes.util.find_library("nvrtc")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", sorted(tables()))
def test_op_table_programs_compile_with_nvcc(name, tmp_path) -> None:
    source = tmp_path / f"{name}.cu"
    source.write_text(table_program(tables()[name].ops))
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    done = subprocess.run(
        ["nvcc", *gencode, "--Werror", "all-warnings", "-c", str(source),
         "-o", str(tmp_path / f"{name}.o")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(find_nvrtc() is None, reason="libnvrtc is not installed")
@pytest.mark.parametrize("name", sorted(tables()))
def test_op_table_programs_compile_with_nvrtc(name) -> None:
    nvrtc = ctypes.CDLL(find_nvrtc())
    program = ctypes.c_void_p()
    code = table_program(tables()[name].ops).encode()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), code, b"gpufeed.cu", 0, None, None) == 0
    try:
        for arch in ARCHS:
            options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
            argv = (ctypes.c_char_p * len(options))(*options)
            status = nvrtc.nvrtcCompileProgram(program, len(options), argv)
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            assert status == 0, log.value.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def test_each_device_function_is_defined_once_and_dispatched_by_op_id() -> None:
    # slow_echo-style user ops reuse echo's device function: one definition.
    class LoudEcho(Echo):
        name = "loud_echo"

    source = table_program(OpTable([LoudEcho(), *OpTable.for_worker("sha256", 240).ops], 240).ops)
    assert source.count("GPUFEED_OP(gpufeed_op_echo)") == 1
    assert "case 0: gpufeed_op_echo(" in source and "case 1: gpufeed_op_sha256(" in source


def test_two_ops_may_not_define_one_device_function_differently() -> None:
    class Impostor(Echo):
        name = "impostor"

        @property
        def cuda_source(self) -> str:
            return "GPUFEED_OP(gpufeed_op_echo) { }"

    with pytest.raises(ConfigError, match="defines device function 'gpufeed_op_echo'"):
        table_program([Echo(), Impostor()])
