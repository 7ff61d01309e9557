// CPU emulation of the CUDA execution model, for running the *unmodified* kernels/*.cu on a machine
// without a GPU (g++ -include cuda_emu.h kernel.cu).
//
// Every thread of a block is a ucontext fiber on one OS thread. Blocks run one after another. A fiber
// runs until it reaches __syncthreads() (or ends), then the next fiber of the block runs; when every
// fiber has reached the barrier the next phase starts. So a thread that reads shared memory which
// another thread writes *without* a barrier in between sees stale data here, deterministically: a
// missing barrier becomes a wrong result, which is what the tests rely on.
//
// __shared__ variables become function-local statics: one copy, shared by the fibers of the running
// block. Atomics are plain read-modify-writes (fibers never interleave inside them). Warp shuffles go
// through a per-block buffer between two barriers, so they must be reached by every thread of the
// block (true of the reductions in kernels/).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

using std::max;
using std::min;

namespace emu {

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  dim3 tid;
};

static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static int current = 0;
static std::function<void()> body;
static std::vector<unsigned long long> shuffle_buffer;
static long long barrier_count = 0;

static void entry() {
  body();
  fibers[current].done = true;  // uc_link returns to the scheduler
}

inline void sync() {
  ++barrier_count;
  swapcontext(&fibers[current].ctx, &scheduler);
}

inline int linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <class F>
void launch(dim3 grid, dim3 block, F f, size_t stack_bytes = 64 * 1024) {
  body = f;
  gridDim = grid;
  blockDim = block;
  const int n = block.x * block.y * block.z;
  fibers.assign(n, Fiber());
  shuffle_buffer.assign(n, 0);
  for (auto& fb : fibers) fb.stack.resize(stack_bytes);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        for (int i = 0; i < n; ++i) {
          Fiber& fb = fibers[i];
          fb.done = false;
          fb.tid = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
          getcontext(&fb.ctx);
          fb.ctx.uc_stack.ss_sp = fb.stack.data();
          fb.ctx.uc_stack.ss_size = fb.stack.size();
          fb.ctx.uc_link = &scheduler;
          makecontext(&fb.ctx, entry, 0);
        }
        bool running = true;
        while (running) {  // one barrier phase per round
          running = false;
          for (int i = 0; i < n; ++i) {
            if (fibers[i].done) continue;
            current = i;
            threadIdx = fibers[i].tid;
            swapcontext(&scheduler, &fibers[i].ctx);
            running = running || !fibers[i].done;
          }
        }
      }
}

}  // namespace emu

#define __syncthreads() emu::sync()

inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
template <class T> inline T __ldg(const T* p) { return *p; }

template <class T> inline T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }
template <class T> inline T atomicMax(T* address, T value) { T old = *address; *address = max(old, value); return old; }
template <class T> inline T atomicMin(T* address, T value) { T old = *address; *address = min(old, value); return old; }

template <class T> inline T __shfl_down_sync(unsigned int /*mask*/, T value, unsigned int delta) {
  const int me = emu::linear_tid();
  std::memcpy(&emu::shuffle_buffer[me], &value, sizeof(T));
  emu::sync();
  const int lane = me % warpSize;
  T out = value;
  if (lane + (int)delta < warpSize && me + (int)delta < (int)emu::shuffle_buffer.size())
    std::memcpy(&out, &emu::shuffle_buffer[me + delta], sizeof(T));
  emu::sync();
  return out;
}
