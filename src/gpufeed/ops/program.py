"""The CUDA translation unit the GPU backends compile for a worker's op table.

One program serves both GPU modes: the contract header, each op's device
function (each distinct source once), a ``gpufeed::dispatch`` that calls the
op a slot header names, then the batch kernel (``gpufeed_batch``: one warp
per slot over a run of slots) and the persistent kernel
(``gpufeed_persistent``). So an op's logic exists once on the device, and the
backends and the compile test build exactly the same source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpufeed.errors import ConfigError
from gpufeed.ops.base import Op, cuda_file

BATCH_KERNEL = "gpufeed_batch"
PERSISTENT_KERNEL = "gpufeed_persistent"
WARP = 32
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*\Z")


def _dispatch(functions: Sequence[str]) -> str:
    # An op without a device function (a tensor op) has no case: the kernel
    # answers it with an error, and the batched backend runs its whole-batch path.
    cases = "\n".join(
        f"    case {op_id}: {fn}(in, out, params[{op_id}], lane, lanes); return;"
        for op_id, fn in enumerate(functions)
        if fn
    )
    return f"""
namespace gpufeed {{
// Op ids are the worker's OpTable ids (the slot header's `op`); an id outside
// the table cannot come from the host, but is answered with an error anyway.
__device__ void dispatch(uint16_t op, const MsgView& in, const ResultView& out,
                         const OpParams* params, uint32_t n_ops, unsigned lane, unsigned lanes) {{
  if (op < n_ops) {{
    switch (op) {{
{cases}
    default: break;
    }}
  }}
  if (lane == 0) {{
    *out.out_len = 0;
    *out.status = STATUS_ERROR;
  }}
}}
}}  // namespace gpufeed
"""


def table_program(ops: Sequence[Op]) -> str:
    """Complete CUDA source for ``ops`` (an OpTable's ops, in id order)."""
    sources: dict[str, str] = {}  # device function name -> the source defining it
    for op in ops:
        fn = op.cuda_function
        if not fn and not op.cuda_source:
            continue  # no device function (see _dispatch)
        if not _IDENTIFIER.match(fn or ""):
            raise ConfigError(f"op {op.name!r}: cuda_function {fn!r} is not a C identifier")
        if sources.setdefault(fn, op.cuda_source) != op.cuda_source:
            raise ConfigError(
                f"op {op.name!r} defines device function {fn!r} differently from another "
                "op of this worker; give one of them another cuda_function name"
            )
    parts = [cuda_file("gpufeed_op.cuh"), *dict.fromkeys(sources.values())]
    parts += [_dispatch([op.cuda_function for op in ops]), cuda_file("slot.cuh")]
    parts += [cuda_file("batch.cu"), cuda_file("persistent.cu")]
    return "\n".join(parts)


def batch_program(op: Op) -> str:
    """``table_program`` for a table of one op (op id 0)."""
    return table_program([op])
