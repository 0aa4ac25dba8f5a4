// The CUDA built-ins gpufeed's device code uses, as host C++20, so that the real
// sources (the op table's device functions, gpufeed_batch, gpufeed_persistent) run
// on a CPU: tests/cuda_host/host_program.py compiles `table_program(ops)` after
// this header with the system compiler and drives the kernels from Python.
//
// Every thread of a launch is a real thread. A warp's 32 lanes meet at a
// std::barrier wherever the code synchronises (__syncwarp, __shfl_sync,
// __ballot_sync), and those calls check CUDA's rule for them: every lane the
// mask names must reach the *same* call. A lane that has exited, or that waits
// at another call, is a violation: the first is recorded (gpufeed_host_violation)
// and the launch is aborted, where a GPU would silently do something undefined.
//
// The rule checked is the strict one: every call is a meeting of the whole warp
// (the lanes its mask names, less those that exited) at one source line. It is
// enough for gpufeed's sources, which synchronise with FULL_MASK at one call site;
// code that relies on sm_70's independent thread scheduling (partial masks met
// from different call sites) would be flagged or hang here.
//
// __trap() aborts the launch the way a trapped kernel loses its context; the
// built-ins that a waiting thread calls (the warp functions, __nanosleep, the
// fences) then end every other thread of the launch.
#ifndef GPUFEED_CUDA_HOST_H
#define GPUFEED_CUDA_HOST_H

#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__

struct uint4 {
  unsigned int x, y, z, w;
};

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

namespace gpufeed_host {

constexpr unsigned WARP = 32;

// Thrown inside a thread of an aborted launch (a trap, a violation) to end it.
struct Aborted {};

struct Launch {
  std::atomic<bool> aborted{false};
  std::mutex mutex;
  std::string why;  // the first trap or violation; empty while all is well

  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> hold(mutex);
      if (why.empty()) why = reason;
    }
    aborted.store(true);
  }
};

struct Warp;

// Runs once per meeting, after the last lane arrived and before any leaves: which
// lanes had exited by then (a lane that leaves this meeting and exits later must
// not count as absent from it).
struct OnMeeting {
  Warp* warp;
  void operator()() noexcept;
};

struct Warp {
  explicit Warp(Launch* launch) : launch(launch), meet(WARP, OnMeeting{this}) {}
  Launch* launch;
  std::barrier<OnMeeting> meet;
  unsigned gone_at[2] = {};  // exited lanes at the last two meetings, by meeting parity
  unsigned completed = 0;    // meetings held
  // Two sets, used in turn by successive meetings: a lane that leaves one meeting
  // and writes for the next cannot overwrite what a slower lane is still reading,
  // so each call needs one barrier phase, not two.
  uint64_t values[2][WARP] = {};
  int lines[2][WARP] = {};
  unsigned meetings[WARP] = {};  // per lane: how many meetings it has been to
  std::atomic<unsigned> exited{0};
};

inline void OnMeeting::operator()() noexcept {
  warp->gone_at[warp->completed & 1u] = warp->exited.load();
  ++warp->completed;
}

struct Thread {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  Warp* warp = nullptr;
  unsigned lane = 0;
};

inline thread_local Thread self;

inline void check_aborted() {
  if (self.warp != nullptr && self.warp->launch->aborted.load(std::memory_order_relaxed))
    throw Aborted{};
}

// One meeting of the warp: every lane of `mask` that is still running arrives at
// the barrier from the call on source line `line`, having put its value in
// values[set]; returns `set`, where the others' values are.
inline unsigned meet(unsigned mask, int line, uint64_t value) {
  Warp& w = *self.warp;
  const unsigned set = w.meetings[self.lane]++ & 1u;
  w.values[set][self.lane] = value;
  w.lines[set][self.lane] = line;
  w.meet.arrive_and_wait();
  check_aborted();
  const unsigned gone = w.gone_at[set];
  std::string problem;
  if ((mask & gone) != 0) {
    problem = "a warp-synchronous call on line " + std::to_string(line) +
              " names lanes that have exited (mask " + std::to_string(mask) + ", exited " +
              std::to_string(gone) + ")";
  }
  for (unsigned lane = 0; lane < WARP && problem.empty(); ++lane) {
    if ((mask >> lane & 1u) != 0 && (gone >> lane & 1u) == 0 && w.lines[set][lane] != line) {
      problem = "lane " + std::to_string(self.lane) + " synchronises on line " +
                std::to_string(line) + " while lane " + std::to_string(lane) + " is on line " +
                std::to_string(w.lines[set][lane]);
    }
  }
  if (!problem.empty()) {
    w.launch->abort(problem);
    throw Aborted{};
  }
  return set;
}

// __syncwarp() and __syncwarp(mask), from the line they are written on.
struct SyncWarp {
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { meet(mask, line, 0); }
};

template <class T>
T shfl_sync(int line, unsigned mask, T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const unsigned set = meet(mask, line, bits);
  T out;
  std::memcpy(&out, &self.warp->values[set][static_cast<unsigned>(src_lane) % WARP], sizeof(T));
  return out;
}

inline unsigned ballot_sync(int line, unsigned mask, int predicate) {
  const unsigned set = meet(mask, line, predicate != 0);
  unsigned ballot = 0;
  for (unsigned lane = 0; lane < WARP; ++lane)
    if ((mask >> lane & 1u) != 0 && self.warp->values[set][lane] != 0) ballot |= 1u << lane;
  return ballot;
}

}  // namespace gpufeed_host

#define threadIdx (gpufeed_host::self.thread_idx)
#define blockIdx (gpufeed_host::self.block_idx)
#define blockDim (gpufeed_host::self.block_dim)
#define gridDim (gpufeed_host::self.grid_dim)

#define __syncwarp(...) gpufeed_host::SyncWarp{__LINE__}(__VA_ARGS__)
#define __shfl_sync(mask, value, src) gpufeed_host::shfl_sync(__LINE__, mask, value, src)
#define __ballot_sync(mask, predicate) gpufeed_host::ballot_sync(__LINE__, mask, predicate)

inline int __ffs(int x) { return __builtin_ffs(x); }

// The fences: a sequentially consistent fence is at least what each CUDA fence
// orders, among the threads of the launch and the host threads alike.
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  gpufeed_host::check_aborted();
}
inline void __threadfence_system() { __threadfence(); }

inline void __nanosleep(unsigned ns) {
  gpufeed_host::check_aborted();
  // A CPU thread that spins holds a core the others need: yield at least.
  if (ns < 1000)
    std::this_thread::yield();
  else
    std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
}

// A load that is never served from a cache this thread kept: volatile on the host.
inline uint4 __ldcv(const uint4* p) {
  const volatile uint4* v = p;
  uint4 out;
  out.x = v->x;
  out.y = v->y;
  out.z = v->z;
  out.w = v->w;
  return out;
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

[[noreturn]] inline void __trap() {
  gpufeed_host::self.warp->launch->abort(
      "__trap() in block " + std::to_string(blockIdx.x) + ", thread " +
      std::to_string(threadIdx.x));
  throw gpufeed_host::Aborted{};
}

#endif  // GPUFEED_CUDA_HOST_H
