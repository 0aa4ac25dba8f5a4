// The device side of the gpufeed op contract, shared by the batched backend
// (one warp per slot, many slots per launch) and the persistent kernel (one
// warp per slot it claims from the GPU-resident ring). An op's logic exists
// once, as a GPUFEED_OP device function; both modes call it.
#ifndef GPUFEED_OP_CUH
#define GPUFEED_OP_CUH

// NVRTC (CuPy's RawModule) ships no C library headers.
#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

namespace gpufeed {

// Slot header, identical to gpufeed.packing's: 16 bytes, little-endian.
struct SlotHeader {
  uint32_t len;       // payload (or result) bytes
  uint16_t op;        // op id in the worker's op table
  uint16_t flags;     // results: status (0 ok, 1 error)
  uint32_t seq;       // per-ring sequence number
  uint32_t reserved;
};
static_assert(sizeof(SlotHeader) == 16, "slot header must stay 16 bytes");

struct MsgView {
  const uint8_t* payload;  // the slot's payload area (16-byte aligned)
  uint32_t len;            // payload bytes; already validated on the host
  uint32_t seq;
};

struct ResultView {
  uint8_t* out;       // the result slot's payload area
  uint32_t cap;       // its size: slot_bytes - 16
  uint32_t* out_len;  // written by lane 0
  uint16_t* status;   // written by lane 0: STATUS_OK or STATUS_ERROR
};

// Per-op constant inputs (dense: W, b and their sizes), set up by the backend.
struct OpParams {
  const void* tensors[4];
  uint32_t dims[4];
};

constexpr uint16_t STATUS_OK = 0;
constexpr uint16_t STATUS_ERROR = 1;

}  // namespace gpufeed

// All `lanes` threads of a warp call an op together, each with its `lane`;
// the op shares the work among them and lane 0 publishes out_len and status.
#define GPUFEED_OP(fn)                                                        \
  __device__ void fn(const gpufeed::MsgView& in, const gpufeed::ResultView& out, \
                     const gpufeed::OpParams& params, unsigned lane, unsigned lanes)

#endif  // GPUFEED_OP_CUH
