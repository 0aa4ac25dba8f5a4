"""The op contract users write against, the built-in ops and their CUDA sources, and the
registry that finds ops by name (NumPy only; no CuPy here)."""

from gpufeed.ops.base import Op, cuda_file
from gpufeed.ops.builtin import Dense, Echo, VectorAdd, default_dense_model
from gpufeed.ops.program import BATCH_KERNEL, PERSISTENT_KERNEL, batch_program, table_program
from gpufeed.ops.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    OpTable,
    load_import_path,
    load_op,
)
from gpufeed.ops.sha256 import Sha256, sha256_batch
from gpufeed.ops.tensor import Tensor, TensorOp, Text

__all__ = [
    "BATCH_KERNEL",
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "PERSISTENT_KERNEL",
    "Dense",
    "Echo",
    "Op",
    "OpTable",
    "Sha256",
    "Tensor",
    "TensorOp",
    "Text",
    "VectorAdd",
    "batch_program",
    "cuda_file",
    "default_dense_model",
    "load_import_path",
    "load_op",
    "sha256_batch",
    "table_program",
]
