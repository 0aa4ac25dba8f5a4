// Running one slot through its op: shared by the batch kernel and the
// persistent kernel, after `gpufeed::dispatch` (generated per op table).
#ifndef GPUFEED_SLOT_CUH
#define GPUFEED_SLOT_CUH

namespace gpufeed {

// All lanes of a warp call this together for one request slot `in` and its
// result slot `res` (both `slot_bytes` long, 16-byte aligned).
__device__ __forceinline__ void run_slot(const uint8_t* in, uint8_t* res, uint32_t slot_bytes,
                                         const OpParams* params, uint32_t n_ops, unsigned lane,
                                         unsigned lanes) {
  const auto* ih = reinterpret_cast<const SlotHeader*>(in);
  auto* rh = reinterpret_cast<SlotHeader*>(res);
  const uint32_t cap = slot_bytes - static_cast<uint32_t>(sizeof(SlotHeader));
  // The host validated every length; clamping anyway means no header, however
  // damaged, can make an op read past its slot.
  const uint32_t len = ih->len <= cap ? ih->len : cap;
  const MsgView msg{in + sizeof(SlotHeader), len, ih->seq};
  const ResultView out{res + sizeof(SlotHeader), cap, &rh->len, &rh->flags};
  dispatch(ih->op, msg, out, params, n_ops, lane, lanes);
  if (lane == 0) {
    rh->op = ih->op;
    rh->seq = ih->seq;
    rh->reserved = 0;
  }
}

}  // namespace gpufeed

#endif  // GPUFEED_SLOT_CUH
