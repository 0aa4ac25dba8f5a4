"""Whole CUDA translation units built around an op's device function.

The batched backend launches one warp per slot over a contiguous run of
request slots and writes the matching result slots; this module is the one
place that knows how a ``GPUFEED_OP`` is wrapped into such a kernel, so the
backends and the compile test build exactly the same source.
"""

from __future__ import annotations

import re

from gpufeed.gpu.ops.base import Op, cuda_file

WARP = 32

_BATCH_KERNEL = r"""
extern "C" __global__ void {kernel}(const uint8_t* __restrict__ in_slots,
                                    uint8_t* __restrict__ out_slots, uint32_t n,
                                    uint32_t slot_bytes, gpufeed::OpParams params) {{
  const unsigned lanes = {warp};
  const unsigned lane = threadIdx.x % lanes;
  const uint64_t slot = (static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  if (slot >= n) return;
  const uint8_t* in = in_slots + slot * slot_bytes;
  uint8_t* res = out_slots + slot * slot_bytes;
  const auto* ih = reinterpret_cast<const gpufeed::SlotHeader*>(in);
  auto* rh = reinterpret_cast<gpufeed::SlotHeader*>(res);
  const gpufeed::MsgView msg{{in + sizeof(gpufeed::SlotHeader), ih->len, ih->seq}};
  const gpufeed::ResultView out{{res + sizeof(gpufeed::SlotHeader),
                                 slot_bytes - static_cast<uint32_t>(sizeof(gpufeed::SlotHeader)),
                                 &rh->len, &rh->flags}};
  {function}(msg, out, params, lane, lanes);
  if (lane == 0) {{
    rh->op = ih->op;
    rh->seq = ih->seq;
    rh->reserved = 0;
  }}
}}
"""


def kernel_name(op: Op) -> str:
    """A C identifier for ``op``'s batch kernel (op names may hold any characters)."""
    return "gpufeed_batch_" + re.sub(r"\W", "_", op.name)


def batch_program(op: Op) -> str:
    """Complete CUDA source: the contract header, the op's device function, its batch kernel."""
    kernel = _BATCH_KERNEL.format(kernel=kernel_name(op), function=op.cuda_function, warp=WARP)
    return "\n".join([cuda_file("gpufeed_op.cuh"), op.cuda_source, kernel])
