// CPU emulation of the CUDA execution model, for running the *unmodified* workbench/resources/kernels/*.cu on a machine
// without a GPU (the harness compiles `#include "cuda_emu.h"` + the kernel with g++ -fsanitize=thread).
//
// Execution: every thread of a block is a ucontext fiber on one OS thread. A fiber runs until it reaches
// __syncthreads() (or a warp shuffle, or its end); when every fiber has arrived the next round starts.
// The order in which fibers run inside a round, and the order of the blocks, is ascending, descending or
// a seeded random permutation (emu_configure), so a result that depends on the order shows up.
//
// Checking: -fsanitize=thread makes the compiler call __tsan_read*/__tsan_write* before every memory
// access of the kernel; this header *defines* those hooks (the TSan runtime is never linked) and checks
//   - bounds: an access must fall in a buffer the harness registered (emu_add_buffer), in __shared__
//     memory, in the running thread's own stack, or in the emulator's own state; otherwise the launch is
//     aborted before the access happens, with the kernel, block, thread and the nearest buffer;
//   - races: two threads of a block touching one address in the same barrier phase (the accesses between
//     two __syncthreads), at least one a plain write, or a plain access beside an atomic one; and two
//     blocks touching one global address in the launch, same rule (blocks are never ordered on a GPU).
//     Warp shuffles are not barriers for memory: a phase ends only at __syncthreads();
//   - uninitialised shared memory: __shared__ memory is filled with garbage at each block's start and a
//     read of a byte no thread of the block wrote is reported.
// Atomics are emulated functions that report themselves as atomic accesses, so a plain `+=` where an
// atomicAdd is needed is a race here. A barrier that is not reached by every live thread is reported.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#define EMU_STATE __attribute__((section("emu_state")))
#define EMU_UNCHECKED __attribute__((no_sanitize("thread"), noinline))
#define EMU_HOOK_FN extern "C" __attribute__((no_sanitize("thread"), visibility("hidden")))

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

static EMU_STATE dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("emu_shared")))
#define __restrict__ __restrict

using std::max;
using std::min;

extern "C" __attribute__((visibility("hidden"))) char __start_emu_shared[], __stop_emu_shared[];
static __attribute__((section("emu_shared"), used)) char emu_shared_anchor[1];  // the section always exists
extern "C" __attribute__((visibility("hidden"))) char __start_emu_state[], __stop_emu_state[];

namespace emu {

enum Kind { READ = 0, WRITE = 1, ATOMIC = 2 };
enum Stop { RUNNING, AT_BARRIER, AT_SHUFFLE, DONE };
static const char* const KIND_NAME[] = {"read", "write", "atomic"};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  Stop stop = RUNNING;
  dim3 tid;
};

// Who touched an address, for one agent kind (threads within a phase, or blocks within the launch).
struct Agents {
  int writer = -1, reader = -1, atomic = -1;
  bool many_readers = false, many_atomics = false;
  // the conflicting agent, or -1
  int conflict(Kind k, int me) const {
    if (writer >= 0 && writer != me) return writer;
    if (k != ATOMIC && atomic >= 0 && (atomic != me || many_atomics)) return atomic != me ? atomic : -2;
    if (k != READ && reader >= 0 && (reader != me || many_readers)) return reader != me ? reader : -2;
    return -1;
  }
  void record(Kind k, int me) {
    if (k == WRITE) writer = me;
    int& who = k == READ ? reader : atomic;
    bool& many = k == READ ? many_readers : many_atomics;
    if (who < 0) who = me; else if (who != me) many = true;
  }
};

struct Shadow {
  long long phase = -1;  // the block phase the thread record belongs to
  Agents threads;
  Agents blocks;         // global memory only
};

struct Buffer {
  uintptr_t begin, end;
  int arg;
};

static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static int current = 0;
static void (*body)() = nullptr;
static const char* kernel_name = "";
static std::vector<unsigned long long> shuffle_buffer;
static std::vector<Buffer> buffers;
static std::unordered_map<uintptr_t, Shadow> shadow;
static std::unordered_set<uintptr_t> shared_written;
static int order_mode = 0;  // 0 ascending, 1 descending, 2 seeded random
static unsigned long long rng = 1;
static long long block_linear = 0, phase = 0;
static bool in_kernel = false, aborted = false;
static std::string error;

EMU_UNCHECKED unsigned long long next_random() {  // splitmix64
  unsigned long long z = (rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

EMU_UNCHECKED std::vector<int> order(int n) {
  std::vector<int> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = order_mode == 1 ? n - 1 - i : i;
  if (order_mode == 2)
    for (int i = n - 1; i > 0; --i) std::swap(idx[i], idx[next_random() % (unsigned long long)(i + 1)]);
  return idx;
}

EMU_UNCHECKED std::string where() {
  char text[160];
  std::snprintf(text, sizeof text, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", kernel_name, blockIdx.x,
                blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  return text;
}

enum Finding { OUT_OF_BOUNDS, RACE, UNINITIALISED, DIVERGENT_BARRIER, FINDINGS };
static bool found[FINDINGS];

EMU_UNCHECKED void fail(Finding what, const std::string& message) {  // the first finding of each kind
  if (found[what]) return;
  found[what] = true;
  error += message + "\n";
}

EMU_UNCHECKED void abort_launch(const std::string& message) {
  fail(OUT_OF_BOUNDS, message);
  aborted = true;
  swapcontext(&fibers[current].ctx, &scheduler);  // never resumed
}

EMU_UNCHECKED std::string describe_outside(uintptr_t a, size_t size) {
  char text[200];
  const Buffer* near = nullptr;
  long long distance = 0;
  for (const Buffer& b : buffers) {
    const long long d = a < b.begin ? (long long)(b.begin - a) : (long long)(a - b.end);
    if (!near || d < distance) near = &b, distance = d;
  }
  if (near)
    std::snprintf(text, sizeof text, "%zu bytes at %p, byte offset %lld of argument %d (a buffer of %llu bytes)", size, (void*)a,
                  (long long)(a - near->begin), near->arg, (unsigned long long)(near->end - near->begin));
  else
    std::snprintf(text, sizeof text, "%zu bytes at %p (no buffer registered)", size, (void*)a);
  return text;
}

// The emulator's own code (std containers instantiated out of line) is instrumented too: `checking`
// keeps the checks from checking themselves.
static bool checking = false;

EMU_UNCHECKED void check(const void* p, size_t size, Kind kind);

EMU_UNCHECKED void access(const void* p, size_t size, Kind kind) {
  if (!in_kernel || aborted || checking) return;
  checking = true;
  check(p, size, kind);
  checking = false;
}

EMU_UNCHECKED void check(const void* p, size_t size, Kind kind) {
  const uintptr_t a = (uintptr_t)p;
  if (a >= (uintptr_t)__start_emu_state && a < (uintptr_t)__stop_emu_state) return;
  const Fiber& me = fibers[current];
  const uintptr_t stack = (uintptr_t)me.stack.data();
  if (a >= stack && a < stack + me.stack.size()) return;  // the thread's own locals
  const bool shared = a >= (uintptr_t)__start_emu_shared && a + size <= (uintptr_t)__stop_emu_shared;
  if (!shared) {
    bool inside = false;
    for (const Buffer& b : buffers) inside = inside || (a >= b.begin && a + size <= b.end);
    if (!inside) abort_launch("out-of-bounds " + std::string(KIND_NAME[kind]) + " in " + where() + ": " +
                              describe_outside(a, size));
  }
  if (shared) {  // reads (an atomic reads too) must see bytes this block wrote
    if (kind != WRITE)
      for (size_t i = 0; i < size; ++i)
        if (!shared_written.count(a + i)) {
          char text[112];
          std::snprintf(text, sizeof text, ": %s of uninitialised __shared__ memory (byte %lld of the shared area)",
                        KIND_NAME[kind], (long long)(a + i - (uintptr_t)__start_emu_shared));
          fail(UNINITIALISED, where() + text);
          break;
        }
    if (kind != READ)
      for (size_t i = 0; i < size; ++i) shared_written.insert(a + i);
  }
  const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  Shadow& s = shadow[a];
  const long long stamp = block_linear * (1ll << 32) + phase;
  if (s.phase != stamp) s.phase = stamp, s.threads = Agents();
  const int other = s.threads.conflict(kind, tid);
  if (other != -1) {
    char text[200];
    std::snprintf(text, sizeof text, ": %s of %s memory conflicts with another thread (%d) in barrier phase %lld: "
                  "%s", KIND_NAME[kind], shared ? "__shared__" : "global", other, phase,
                  shared ? "a __syncthreads() or an atomic is missing" : describe_outside(a, size).c_str());
    fail(RACE, "race in " + where() + text);
  }
  s.threads.record(kind, tid);
  if (!shared) {
    const int other_block = s.blocks.conflict(kind, (int)block_linear);
    if (other_block != -1) {
      char text[200];
      std::snprintf(text, sizeof text, ": %s of global memory conflicts with block #%d (blocks are unordered): %s",
                    KIND_NAME[kind], other_block, describe_outside(a, size).c_str());
      fail(RACE, "race in " + where() + text);
    }
    s.blocks.record(kind, (int)block_linear);
  }
}

EMU_UNCHECKED void wait(Stop why) {
  const bool was = in_kernel;
  in_kernel = false;  // first: the vector access below is instrumented code
  fibers[current].stop = why;
  swapcontext(&fibers[current].ctx, &scheduler);
  in_kernel = was;
}

// Marks a stretch of the emulator's own code run from inside a kernel thread as not the kernel's.
struct Unchecked {
  bool was;
  EMU_UNCHECKED Unchecked() : was(checking) { checking = true; }
  EMU_UNCHECKED ~Unchecked() { checking = was; }
};

inline void sync() { wait(AT_BARRIER); }

EMU_UNCHECKED void entry() {
  in_kernel = true;
  body();
  in_kernel = false;
  fibers[current].stop = DONE;  // uc_link returns to the scheduler
}

// Run one round: every live fiber up to its next stop. Returns false when all are done.
EMU_UNCHECKED bool round(const std::vector<int>& who) {
  for (int i : who) {
    if (fibers[i].stop == DONE) continue;
    current = i;
    threadIdx = fibers[i].tid;
    fibers[i].stop = RUNNING;
    swapcontext(&scheduler, &fibers[i].ctx);
    if (aborted) return false;
  }
  int barrier = 0, shuffle = 0, done = 0;
  for (const Fiber& f : fibers) barrier += f.stop == AT_BARRIER, shuffle += f.stop == AT_SHUFFLE, done += f.stop == DONE;
  if (done == (int)fibers.size()) return false;
  if (barrier && (shuffle || done)) {
    char text[160];
    std::snprintf(text, sizeof text, "kernel %s, block (%u,%u,%u): __syncthreads() reached by %d of %zu threads "
                  "(%d ended, %d at a warp shuffle)", kernel_name, blockIdx.x, blockIdx.y, blockIdx.z, barrier,
                  fibers.size(), done, shuffle);
    fail(DIVERGENT_BARRIER, text);
  }
  if (barrier) ++phase;
  return true;
}

EMU_UNCHECKED void launch(const char* name, dim3 grid, dim3 block, void (*f)(), size_t stack_bytes = 64 * 1024) {
  kernel_name = name;
  body = f;
  gridDim = grid;
  blockDim = block;
  error.clear();
  std::fill(found, found + FINDINGS, false);
  aborted = checking = false;
  shadow.clear();
  const int n = block.x * block.y * block.z;
  fibers.assign(n, Fiber());
  shuffle_buffer.assign(n, 0);
  for (auto& fb : fibers) fb.stack.resize(stack_bytes);
  const long long blocks = (long long)grid.x * grid.y * grid.z;
  std::vector<int> block_order = order((int)blocks);
  for (int b : block_order) {
    block_linear = b;
    phase = 0;
    blockIdx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
    for (char* p = __start_emu_shared; p < __stop_emu_shared; ++p) *p = (char)next_random();  // garbage
    shared_written.clear();
    for (int i = 0; i < n; ++i) {
      Fiber& fb = fibers[i];
      fb.stop = RUNNING;
      fb.tid = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
      getcontext(&fb.ctx);
      fb.ctx.uc_stack.ss_sp = fb.stack.data();
      fb.ctx.uc_stack.ss_size = fb.stack.size();
      fb.ctx.uc_link = &scheduler;
      makecontext(&fb.ctx, entry, 0);
    }
    while (round(order(n))) {
    }
    if (aborted) break;
  }
  in_kernel = false;
}

}  // namespace emu

#define __syncthreads() emu::sync()

inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }

template <class T> EMU_UNCHECKED T __ldg(const T* p) { emu::access(p, sizeof(T), emu::READ); return *p; }

template <class T> EMU_UNCHECKED T atomicAdd(T* address, T value) {
  emu::access(address, sizeof(T), emu::ATOMIC);
  T old = *address;
  *address = old + value;
  return old;
}
template <class T> EMU_UNCHECKED T atomicMax(T* address, T value) {
  emu::access(address, sizeof(T), emu::ATOMIC);
  T old = *address;
  *address = max(old, value);
  return old;
}
template <class T> EMU_UNCHECKED T atomicMin(T* address, T value) {
  emu::access(address, sizeof(T), emu::ATOMIC);
  T old = *address;
  *address = min(old, value);
  return old;
}

// A warp shuffle: every thread posts its value, waits for the others (not a memory barrier), reads its
// partner's. Lanes whose partner lies outside the warp keep their own value, as on the GPU.
template <class T> EMU_UNCHECKED T __shfl_down_sync(unsigned int /*mask*/, T value, unsigned int delta) {
  const int me = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  {
    emu::Unchecked guard;  // never across a switch: `checking` is one flag for all fibers
    std::memcpy(&emu::shuffle_buffer[me], &value, sizeof(T));
  }
  emu::wait(emu::AT_SHUFFLE);
  const int lane = me % warpSize;
  T out = value;
  {
    emu::Unchecked guard;
    if (lane + (int)delta < warpSize && me + (int)delta < (int)emu::shuffle_buffer.size())
      std::memcpy(&out, &emu::shuffle_buffer[me + delta], sizeof(T));
  }
  emu::wait(emu::AT_SHUFFLE);
  return out;
}

// The TSan instrumentation's entry points, defined here (no TSan runtime is linked).
#define EMU_HOOK(size)                                                                              \
  EMU_HOOK_FN void __tsan_read##size(void* p) { emu::access(p, size, emu::READ); }     \
  EMU_HOOK_FN void __tsan_write##size(void* p) { emu::access(p, size, emu::WRITE); }   \
  EMU_HOOK_FN void __tsan_unaligned_read##size(void* p) { emu::access(p, size, emu::READ); } \
  EMU_HOOK_FN void __tsan_unaligned_write##size(void* p) { emu::access(p, size, emu::WRITE); }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
EMU_HOOK_FN void __tsan_read_range(void* p, unsigned long n) { emu::access(p, n, emu::READ); }
EMU_HOOK_FN void __tsan_write_range(void* p, unsigned long n) { emu::access(p, n, emu::WRITE); }
EMU_HOOK_FN void __tsan_func_entry(void*) {}
EMU_HOOK_FN void __tsan_func_exit() {}
EMU_HOOK_FN void __tsan_init() {}
EMU_HOOK_FN void __tsan_vptr_update(void**, void*) {}

// The harness's controls.
extern "C" EMU_UNCHECKED void emu_configure(int order_mode, unsigned long long seed) {
  emu::order_mode = order_mode;
  emu::rng = seed * 2654435761ull + 1;
}
extern "C" EMU_UNCHECKED void emu_clear_buffers() { emu::buffers.clear(); }
extern "C" EMU_UNCHECKED void emu_add_buffer(void* p, unsigned long long bytes, int arg) {
  emu::buffers.push_back({(uintptr_t)p, (uintptr_t)p + bytes, arg});
}
extern "C" EMU_UNCHECKED const char* emu_error() { return emu::error.c_str(); }
