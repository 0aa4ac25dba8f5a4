// The batched backend's kernel: one warp per slot over a contiguous run of
// request slots, writing the matching result slots. `gpufeed_dispatch` (made
// by gpufeed.ops.program for the worker's op table) calls the slot's op.
extern "C" __global__ void gpufeed_batch(const uint8_t* __restrict__ in_slots,
                                         uint8_t* __restrict__ out_slots, uint32_t n,
                                         uint32_t slot_bytes,
                                         const gpufeed::OpParams* __restrict__ params,
                                         uint32_t n_ops) {
  const unsigned lanes = 32;
  const unsigned lane = threadIdx.x % lanes;
  const uint64_t slot = (static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  if (slot >= n) return;
  const uint8_t* in = in_slots + slot * slot_bytes;
  uint8_t* res = out_slots + slot * slot_bytes;
  gpufeed::run_slot(in, res, slot_bytes, params, n_ops, lane, lanes);
}
