"""The op contract, the built-in ops and the registry (NumPy only; no CuPy here)."""

from gpufeed.gpu.ops.base import Op, cuda_file
from gpufeed.gpu.ops.builtin import Dense, Echo, VectorAdd, default_dense_model
from gpufeed.gpu.ops.program import batch_program, kernel_name
from gpufeed.gpu.ops.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    OpTable,
    load_import_path,
    load_op,
)
from gpufeed.gpu.ops.sha256 import Sha256, sha256_batch

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Dense",
    "Echo",
    "Op",
    "OpTable",
    "Sha256",
    "VectorAdd",
    "batch_program",
    "cuda_file",
    "default_dense_model",
    "kernel_name",
    "load_import_path",
    "load_op",
    "sha256_batch",
]
