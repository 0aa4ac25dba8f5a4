// Launchers for the program's two kernels, appended after `table_program(ops)`
// (which follows cuda_host.h): C functions that host_program.py calls with ctypes.
#include <condition_variable>
#include <memory>
#include <vector>

namespace gpufeed_host {

// One launch: `warps` warps of `grid * block` threads, `resident` warps at a
// time, each warp's lanes on 32 threads of their own. The persistent kernel
// needs every warp resident at once (they wait for each other); the batch
// kernel's warps are independent, so a few at a time will do.
class Grid {
 public:
  template <class Kernel>
  Grid(Kernel kernel, unsigned grid, unsigned block, unsigned resident) {
    const unsigned warps = grid * block / WARP;
    resident = resident < warps ? resident : warps;
    for (unsigned w = 0; w < warps; ++w) warps_.push_back(std::make_unique<Warp>(&launch));
    total_ = resident * WARP;
    for (unsigned slot = 0; slot < resident; ++slot) {
      for (unsigned lane = 0; lane < WARP; ++lane) {
        threads_.emplace_back([this, kernel, grid, block, resident, warps, slot, lane] {
          for (unsigned w = slot; w < warps; w += resident) {
            const unsigned thread = w * WARP + lane;  // its index in the whole grid
            Warp& warp = *warps_[w];
            self.warp = &warp;
            self.lane = lane;
            self.grid_dim = dim3{grid, 1, 1};
            self.block_dim = dim3{block, 1, 1};
            self.block_idx = dim3{thread / block, 0, 0};
            self.thread_idx = dim3{thread % block, 0, 0};
            try {
              if (!launch.aborted.load()) kernel();
            } catch (const Aborted&) {
            } catch (const std::exception& e) {
              launch.abort(std::string("a C++ exception in a kernel thread: ") + e.what());
            }
            warp.exited.fetch_or(1u << lane);
            warp.meet.arrive_and_drop();
          }
          std::lock_guard<std::mutex> hold(ended_mutex_);
          if (++ended_ == total_) ended_cv_.notify_all();
        });
      }
    }
  }

  // True once every thread has ended (then they are joined). Callable from any
  // thread at once (the queue's watchdog asks while the main thread shuts down).
  bool join(double timeout_s) {
    std::unique_lock<std::mutex> hold(ended_mutex_);
    const bool all = ended_cv_.wait_for(hold, std::chrono::duration<double>(timeout_s),
                                        [this] { return ended_ == total_; });
    hold.unlock();
    if (all) join_threads();
    return all;
  }

  // Copies why the launch was aborted ("" if it was not) into buf, under the lock.
  void why(char* buf, size_t size) {
    std::lock_guard<std::mutex> hold(launch.mutex);
    const size_t n = launch.why.size() < size - 1 ? launch.why.size() : size - 1;
    std::memcpy(buf, launch.why.data(), n);
    buf[n] = 0;
  }

  ~Grid() {
    launch.abort("the launch was freed while it ran");
    join_threads();
  }

  Launch launch;

 private:
  void join_threads() {
    std::lock_guard<std::mutex> hold(join_mutex_);  // std::thread::join is not re-entrant
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  std::mutex join_mutex_;

  std::vector<std::unique_ptr<Warp>> warps_;
  std::vector<std::thread> threads_;
  std::mutex ended_mutex_;
  std::condition_variable ended_cv_;
  unsigned ended_ = 0;
  unsigned total_ = 0;
};

}  // namespace gpufeed_host

extern "C" {

// gpufeed_batch over `n` slots, as the batched backend launches it; returns at
// once (join it). Its warps share nothing, so `resident` run at a time.
void* gpufeed_host_batch(const uint8_t* in_slots, uint8_t* out_slots, uint32_t n,
                         uint32_t slot_bytes, const gpufeed::OpParams* params, uint32_t n_ops,
                         unsigned threads_per_block, unsigned resident) {
  const unsigned blocks = (n * 32 + threads_per_block - 1) / threads_per_block;
  auto* grid = new gpufeed_host::Grid(
      [=] { gpufeed_batch(in_slots, out_slots, n, slot_bytes, params, n_ops); }, blocks,
      threads_per_block, resident);
  return grid;
}

// gpufeed_persistent on `blocks` blocks of `threads` threads, every warp resident,
// as the persistent queue launches it; returns at once.
void* gpufeed_host_persistent(const uint8_t* requests, uint8_t* results, uint32_t* state,
                              uint64_t* control, uint64_t* sync, uint8_t* scratch,
                              uint32_t capacity_log2, uint32_t slot_bytes,
                              const gpufeed::OpParams* params, uint32_t n_ops, unsigned blocks,
                              unsigned threads) {
  return new gpufeed_host::Grid(
      [=] {
        gpufeed_persistent(requests, results, state, control, sync, scratch, capacity_log2,
                           slot_bytes, params, n_ops);
      },
      blocks, threads, blocks * threads / 32);
}

int gpufeed_host_join(void* grid, double timeout_s) {
  return static_cast<gpufeed_host::Grid*>(grid)->join(timeout_s) ? 1 : 0;
}

// Why the launch was aborted (a trap, a broken warp rule), or "", into buf.
void gpufeed_host_why(void* grid, char* buf, size_t size) {
  static_cast<gpufeed_host::Grid*>(grid)->why(buf, size);
}

void gpufeed_host_free(void* grid) { delete static_cast<gpufeed_host::Grid*>(grid); }

}  // extern "C"
