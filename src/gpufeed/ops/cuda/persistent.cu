// The persistent kernel behind `--backend persistent` and gpufeed.gpu.persistent.GpuQueue.
//
// Memory (see gpufeed/gpu/persistent/memory.py, which the host side and its
// CPU emulation share):
//   state[capacity]   u32 per slot, mapped pinned host memory. The host writes
//                     READY(id) after the slot's request; the device writes
//                     DONE(id) after the slot's result. A tag carries the lap
//                     (id / capacity), so a slot's previous message never
//                     passes for the current one.
//   control[]         u64 words, mapped pinned host memory, one 64-byte line
//                     each: STOP (host -> device), STARTED, HEARTBEAT, EXITED.
//   requests          capacity slots: mapped pinned host memory, or device
//                     memory the host copies into before READY.
//   results           capacity slots, mapped pinned host memory.
//   sync[]            u64 words in device memory: the ticket counter, the
//                     count of messages seen READY, the device-side stop.
//   scratch           two slots per worker warp, device memory.
//
// Block 0's first warp is the dispatcher: the only warp that polls host
// memory across PCIe. It advances VISIBLE over consecutive READY slots. Every
// warp of the other blocks is a worker: it takes the next message id from
// the ticket counter, waits (in device memory) until VISIBLE passes it, and
// runs that slot. Workers never poll across PCIe, so an idle kernel costs the
// bus one read at a time.
namespace gpufeed_pk {

// Indices into control[] (u64 words; 8 words = one 64-byte line each).
constexpr unsigned STOP = 0;
constexpr unsigned STARTED = 8;
constexpr unsigned HEARTBEAT = 16;
constexpr unsigned EXITED = 24;
// Indices into sync[] (u64 words; 16 words = one 128-byte L2 line each).
constexpr unsigned TICKET = 0;
constexpr unsigned VISIBLE = 16;
constexpr unsigned DEVICE_STOP = 32;

constexpr uint32_t PHASE_READY = 1;
constexpr uint32_t PHASE_DONE = 2;
constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ uint32_t tag(uint64_t id, uint32_t capacity_log2, uint32_t phase) {
  return (static_cast<uint32_t>(id >> capacity_log2) & 0x3fffffffu) << 2 | phase;
}

// The warp copies `bytes` (rounded up to 16) from src to dst in 16-byte words.
// A request is read with volatile loads (__ldcv: fetched again, never served
// from a cache line this SM kept from the slot's previous message).
__device__ __forceinline__ void copy_request(uint8_t* dst, const uint8_t* src, uint32_t bytes,
                                             unsigned lane) {
  const uint32_t words = (bytes + 15) / 16;
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(dst);
  for (uint32_t i = lane; i < words; i += 32) d[i] = __ldcv(s + i);
}

__device__ __forceinline__ void copy_result(uint8_t* dst, const uint8_t* src, uint32_t bytes,
                                            unsigned lane) {
  const uint32_t words = (bytes + 15) / 16;
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(dst);
  for (uint32_t i = lane; i < words; i += 32) d[i] = s[i];
}

__device__ void dispatcher(volatile const uint32_t* state, volatile uint64_t* control,
                           volatile uint64_t* sync, uint32_t capacity, uint32_t capacity_log2,
                           unsigned lane) {
  if (lane == 0) {
    control[STARTED] = 1;
    __threadfence_system();
  }
  uint64_t next = 0;  // the first message id not yet seen READY
  uint64_t idle = 0;
  for (;;) {
    // 32 lanes look at the next 32 slots in one coalesced read.
    const uint64_t id = next + lane;
    const bool ready = lane < capacity && state[id & (capacity - 1)] ==
                                              tag(id, capacity_log2, PHASE_READY);
    const unsigned mask = __ballot_sync(FULL_MASK, ready);
    const unsigned run = mask == FULL_MASK ? 32 : __ffs(~mask) - 1;
    if (run > 0) {
      // Acquire: the host wrote each request before its READY; this fence
      // orders our READY reads before the workers' request reads, which
      // they begin only after seeing VISIBLE (written after the fence).
      __threadfence_system();
      next += run;
      if (lane == 0) {
        sync[VISIBLE] = next;
        __threadfence();
      }
      continue;
    }
    ++idle;
    if ((idle & 15) != 0) continue;
    if (lane == 0 && (idle & 1023) == 0) control[HEARTBEAT] = idle;
    // One read of STOP, shared: if each lane read it, the host's write could land
    // between two lanes' reads, and the lanes that saw 0 would reach the next
    // __ballot_sync(FULL_MASK) without those that left (undefined behaviour).
    int stop = 0;
    if (lane == 0) stop = control[STOP] != 0;
    if (__shfl_sync(FULL_MASK, stop, 0)) {
      if (lane == 0) {
        sync[DEVICE_STOP] = 1;
        __threadfence_system();
        control[EXITED] = 1;
      }
      return;
    }
  }
}

__device__ void worker(const uint8_t* requests, uint8_t* results, volatile uint32_t* state,
                       uint64_t* sync_words, uint8_t* scratch, uint32_t capacity_log2,
                       uint32_t slot_bytes, const gpufeed::OpParams* params, uint32_t n_ops,
                       unsigned lane) {
  const uint32_t capacity = 1u << capacity_log2;
  const uint32_t cap = slot_bytes - static_cast<uint32_t>(sizeof(gpufeed::SlotHeader));
  uint8_t* scratch_in = scratch;
  uint8_t* scratch_out = scratch + slot_bytes;
  volatile uint64_t* sync = sync_words;
  // uint64_t is unsigned long under nvcc and unsigned long long under NVRTC;
  // atomicAdd takes the latter.
  auto* ticket_word = reinterpret_cast<unsigned long long*>(sync_words + TICKET);
  for (;;) {
    unsigned long long ticket = 0;
    if (lane == 0) ticket = atomicAdd(ticket_word, 1ULL);
    const uint64_t id = __shfl_sync(FULL_MASK, ticket, 0);
    int stop = 0;
    if (lane == 0) {
      for (;;) {
        const uint64_t visible = sync[VISIBLE];
        if (visible > id) break;
        if (sync[DEVICE_STOP] != 0) {
          // The dispatcher advanced VISIBLE before it set DEVICE_STOP; look again
          // after seeing the stop, or a message made visible just before it, and
          // read here as not yet visible, would be dropped.
          __threadfence();
          if (sync[VISIBLE] > id) break;
          stop = 1;
          break;
        }
        // The warp holding the next message polls fastest; warps further
        // back sleep longer, so the device's L2 is not flooded by idle warps.
        const uint64_t ahead = id - visible;
        __nanosleep(ahead < 4 ? 32u : static_cast<unsigned>(ahead < 32 ? 64 * ahead : 2048));
      }
    }
    if (__shfl_sync(FULL_MASK, stop, 0)) return;
    __threadfence_system();  // acquire: pairs with the dispatcher's fence before VISIBLE
    const uint32_t slot = static_cast<uint32_t>(id & (capacity - 1));
    const uint8_t* request = requests + static_cast<uint64_t>(slot) * slot_bytes;
    uint8_t* result = results + static_cast<uint64_t>(slot) * slot_bytes;
    // Stage the request in device memory with wide, coalesced reads: ops read
    // bytes one at a time (sha256), which across PCIe would cost a bus round
    // trip each.
    const uint32_t in_len = *reinterpret_cast<volatile const uint32_t*>(request);  // header len
    copy_request(scratch_in, request, 16 + (in_len <= cap ? in_len : cap), lane);
    __syncwarp();
    gpufeed::run_slot(scratch_in, scratch_out, slot_bytes, params, n_ops, lane, 32);
    __syncwarp();
    const uint32_t out_len = reinterpret_cast<const gpufeed::SlotHeader*>(scratch_out)->len;
    copy_result(result, scratch_out, 16 + (out_len <= cap ? out_len : cap), lane);
    // Release: every lane's result writes reach the host before DONE does.
    __threadfence_system();
    __syncwarp();
    if (lane == 0) state[slot] = tag(id, capacity_log2, PHASE_DONE);
  }
}

}  // namespace gpufeed_pk

extern "C" __global__ void gpufeed_persistent(const uint8_t* requests, uint8_t* results,
                                              uint32_t* state, uint64_t* control, uint64_t* sync,
                                              uint8_t* scratch, uint32_t capacity_log2,
                                              uint32_t slot_bytes,
                                              const gpufeed::OpParams* params, uint32_t n_ops) {
  const unsigned lane = threadIdx.x % 32;
  if (blockIdx.x == 0) {
    if (threadIdx.x < 32)
      gpufeed_pk::dispatcher(state, control, sync, 1u << capacity_log2, capacity_log2,
                                     lane);
    return;
  }
  const uint64_t warp = (static_cast<uint64_t>(blockIdx.x - 1) * blockDim.x + threadIdx.x) / 32;
  gpufeed_pk::worker(requests, results, state, sync,
                             scratch + warp * 2 * static_cast<uint64_t>(slot_bytes),
                             capacity_log2, slot_bytes, params, n_ops, lane);
}
