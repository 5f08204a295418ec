// A small CPU emulator of the CUDA execution model, enough to run the myq kernel files
// (csrc/cuda/*.cu compiled as C++ with -DMYQ_CUDA_SIM) on a machine without a GPU.
//
// Every CUDA thread of a block is a fiber (ucontext) scheduled cooperatively, round robin;
// blocks run one after the other. __syncthreads and the warp-collective operations
// (__shfl_xor_sync, ldmatrix, mma.sync) are barriers over the block / the warp, so the
// emulation is deterministic. mma.sync and ldmatrix are computed from the fragment layouts
// of the PTX ISA ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k32", "ldmatrix"), written
// out here independently of the kernels; cp.async copies are queued per thread and only
// land at the cp.async.wait_group that retires them (a kernel reading a stage before
// waiting for it reads stale data). __shared__ arrays are static: one block at a time.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline
#ifndef __restrict__
#define __restrict__ __restrict
#endif

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace sim {

struct Barrier {
  int arrived = 0;
  unsigned generation = 0;
};

struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;  // 16, or 0: zero-fill
};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  uint3 tid;
  std::vector<std::vector<PendingCopy>> groups{1};  // cp.async groups; the last one is open
};

struct State {
  std::vector<Fiber> fibers;
  int cur = 0;
  ucontext_t scheduler;
  std::function<void()> body;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint64_t> scratch;  // [warps][32][8] words for warp collectives
  std::vector<unsigned char> dynamic_smem;
  unsigned long progress = 0;
};
inline State state;

inline int nthreads() { return static_cast<int>(blockDim.x * blockDim.y * blockDim.z); }
inline int linear_tid() { return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }
inline int warp_id() { return linear_tid() / 32; }
inline int lane_id() { return linear_tid() % 32; }

inline void yield() { swapcontext(&state.fibers[state.cur].ctx, &state.scheduler); }

inline void wait_barrier(Barrier& b, int count) {
  const unsigned gen = b.generation;
  if (++b.arrived == count) {
    b.arrived = 0;
    ++b.generation;
    ++state.progress;
    return;
  }
  while (b.generation == gen) yield();
}

inline int warp_size_live(int warp) {
  const int first = warp * 32, last = std::min(first + 32, nthreads());
  return last - first;
}
inline void warp_sync() { wait_barrier(state.warp_barriers[warp_id()], warp_size_live(warp_id())); }
inline uint64_t* scratch(int lane) { return &state.scratch[(static_cast<size_t>(warp_id()) * 32 + lane) * 8]; }

inline void fiber_entry() {
  state.body();
  state.fibers[state.cur].done = true;
  ++state.progress;
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  gridDim = grid;
  blockDim = block;
  state.dynamic_smem.assign(smem + 16, 0xA5);  // garbage, like real shared memory
  const int n = static_cast<int>(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = make_uint3(bx, by, bz);
        state.fibers.assign(n, Fiber{});
        state.warp_barriers.assign((n + 31) / 32, Barrier{});
        state.block_barrier = Barrier{};
        state.scratch.assign(static_cast<size_t>((n + 31) / 32) * 32 * 8, 0);
        state.body = [&] { kernel(args...); };
        for (int i = 0; i < n; ++i) {
          Fiber& f = state.fibers[i];
          f.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
          f.stack.resize(256 * 1024);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &state.scheduler;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        int idle_rounds = 0;
        for (;;) {
          bool any = false;
          const unsigned long before = state.progress;
          for (int i = 0; i < n; ++i) {
            if (state.fibers[i].done) continue;
            any = true;
            state.cur = i;
            threadIdx = state.fibers[i].tid;
            swapcontext(&state.scheduler, &state.fibers[i].ctx);
          }
          if (!any) break;
          idle_rounds = state.progress == before ? idle_rounds + 1 : 0;
          if (idle_rounds > 4) {
            std::fprintf(stderr, "cuda_sim: deadlock in block (%u, %u, %u): threads wait at a barrier others never reach\n",
                         bx, by, bz);
            std::abort();
          }
        }
        for (Fiber& f : state.fibers)
          for (auto& g : f.groups)
            if (!g.empty()) {
              std::fprintf(stderr, "cuda_sim: a thread exited with cp.async copies never waited for\n");
              std::abort();
            }
      }
}

inline void* dynamic_smem() { return state.dynamic_smem.data(); }

// ---- cp.async --------------------------------------------------------------------------------
inline void cp_async16(void* dst, const void* src, bool pred) {
  state.fibers[state.cur].groups.back().push_back({dst, src, pred ? 16 : 0});
}
inline void cp_async_commit() { state.fibers[state.cur].groups.emplace_back(); }
inline void cp_async_wait(int n) {  // all but the n most recent committed groups land
  auto& groups = state.fibers[state.cur].groups;
  const int committed = static_cast<int>(groups.size()) - 1;
  for (int i = 0; i < committed - n; ++i) {
    for (const PendingCopy& c : groups[i]) {
      if (c.bytes) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    groups[i].clear();
  }
  if (committed - n > 0) groups.erase(groups.begin(), groups.begin() + (committed - n));
}

// ---- warp collectives ---------------------------------------------------------------------------
template <typename T> T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= 8, "");
  uint64_t w = 0;
  std::memcpy(&w, &v, sizeof(T));
  scratch(lane_id())[0] = w;
  warp_sync();
  const uint64_t r = scratch(lane_id() ^ mask)[0];
  warp_sync();
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the row addresses of
// matrix j; lane l receives, of each matrix j, the 32-bit word at row l/4, column pair l%4.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  scratch(lane_id())[0] = reinterpret_cast<uint64_t>(row_addr);
  warp_sync();
  const int l = lane_id();
  for (int j = 0; j < 4; ++j) {
    const auto* row = reinterpret_cast<const unsigned char*>(scratch(8 * j + l / 4)[0]);
    std::memcpy(&r[j], row + 4 * (l % 4), 4);
  }
  warp_sync();
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, layouts of the PTX ISA:
//   A: a[i] (i = 0..15, 4 per register): row g (i < 4 or 8 <= i < 12) else g + 8,
//      col 4t + (i & 3) + (i >= 8 ? 16 : 0);  B: b[i] (8): row (k) 4t + (i & 3) + (i >= 4 ? 16 : 0), col g;
//   C/D: c[i]: row g + (i >= 2 ? 8 : 0), col 2t + (i & 1).   (g = lane / 4, t = lane % 4)
inline void mma_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint64_t* s = scratch(lane_id());
  for (int i = 0; i < 4; ++i) s[i] = a[i];
  for (int i = 0; i < 2; ++i) s[4 + i] = b[i];
  warp_sync();
  int8_t A[16][32], B[32][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const uint64_t* o = scratch(lane);
    for (int i = 0; i < 16; ++i) {
      const int row = g + ((i / 4) % 2 ? 8 : 0), col = 4 * t + (i & 3) + (i >= 8 ? 16 : 0);
      A[row][col] = static_cast<int8_t>((o[i / 4] >> (8 * (i % 4))) & 0xFF);
    }
    for (int i = 0; i < 8; ++i) {
      const int k = 4 * t + (i & 3) + (i >= 4 ? 16 : 0);
      B[k][g] = static_cast<int8_t>((o[4 + i / 4] >> (8 * (i % 4))) & 0xFF);
    }
  }
  warp_sync();
  const int g = lane_id() / 4, t = lane_id() % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    int acc = d[i];
    for (int k = 0; k < 32; ++k) acc += static_cast<int>(A[row][k]) * static_cast<int>(B[k][col]);
    d[i] = acc;
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.f32, layouts of the PTX ISA:
//   A: a[i] (i = 0..7, 2 per register): row g (i = 0, 1, 4, 5) else g + 8, col 2t + (i & 1) + (i >= 4 ? 8 : 0);
//   B: b[i] (4): row (k) 2t + (i & 1) + (i >= 2 ? 8 : 0), col g;  C/D as above.
template <typename T> float to_f(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (sizeof(T) == 2 && std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}
template <typename T> void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint64_t* s = scratch(lane_id());
  for (int i = 0; i < 4; ++i) s[i] = a[i];
  for (int i = 0; i < 2; ++i) s[4 + i] = b[i];
  warp_sync();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const uint64_t* o = scratch(lane);
    for (int i = 0; i < 8; ++i) {
      const int row = g + ((i / 2) % 2 ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = to_f<T>(static_cast<uint16_t>(o[i / 2] >> (16 * (i % 2))));
    }
    for (int i = 0; i < 4; ++i) {
      const int k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][g] = to_f<T>(static_cast<uint16_t>(o[4 + i / 2] >> (16 * (i % 2))));
    }
  }
  warp_sync();
  const int g = lane_id() / 4, t = lane_id() % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc;
  }
}

}  // namespace sim

// ---- CUDA device API used by the kernels -----------------------------------------------------
inline void __syncthreads() { sim::wait_barrier(sim::state.block_barrier, sim::nthreads()); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int mask) { return sim::shfl_xor(v, mask); }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __int2float_rn(int v) { return static_cast<float>(v); }
inline float __int_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
template <typename T> T __ldg(const T* p) { return *p; }
template <typename T> T min(T a, T b) { return a < b ? a : b; }

#undef cudaFuncSetAttribute
#define cudaFuncSetAttribute(...) cudaSuccess
#define cudaGetLastError() cudaSuccess
