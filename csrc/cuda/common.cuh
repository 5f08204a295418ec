// Device helpers shared by the myq kernel files: dtype conversions and the few PTX
// instructions the kernels use (cp.async, ldmatrix, mma.sync), each in one small wrapper.
// Torch-free: include only from .cu files.
#pragma once
#include <cstdint>
#ifdef MYQ_CUDA_SIM  // compiled as C++ for the CPU emulator (sim/cuda_sim.h), tests only
#include "sim/cuda_sim.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "myq_cuda.h"

// Dynamic shared memory and kernel launches, spelled so the emulator can replace them.
#ifdef MYQ_CUDA_SIM
#define MYQ_DYNAMIC_SMEM(name) uint4* name = static_cast<uint4*>(::sim::dynamic_smem())
#define MYQ_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::sim::launch(kernel, dim3(grid), dim3(block), smem, __VA_ARGS__)
#else
#define MYQ_DYNAMIC_SMEM(name) extern __shared__ uint4 name[]
#define MYQ_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace myq::cuda {

// ---- element types ---------------------------------------------------------------------

template <typename T> struct Elem;
template <> struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  // two floats -> one 32-bit register holding (lo, hi) as f16x2
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// A float32 / float16 / bfloat16 vector element chosen at run time (scales, zeros, bias):
// the branch is uniform across the grid, and these loads are rare next to the weights.
__device__ __forceinline__ float load_as_float(const void* p, int dtype, int64_t i) {
  if (dtype == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  if (dtype == kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_from_float(void* p, int dtype, int64_t i, float v) {
  if (dtype == kF16) static_cast<__half*>(p)[i] = __float2half_rn(v);
  else if (dtype == kBF16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

// Two adjacent elements p[i], p[i + 1] in one store; i even and p 8-byte aligned.
__device__ __forceinline__ void store2_from_float(void* p, int dtype, int64_t i, float v0, float v1) {
  if (dtype == kF16) *reinterpret_cast<__half2*>(static_cast<__half*>(p) + i) = __floats2half2_rn(v0, v1);
  else if (dtype == kBF16)
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p) + i) = __floats2bfloat162_rn(v0, v1);
  else *reinterpret_cast<float2*>(static_cast<float*>(p) + i) = make_float2(v0, v1);
}

// 16-byte global load that bypasses L1 (weights are read exactly once).
__device__ __forceinline__ uint4 ldg_stream16(const void* p) {
#ifdef MYQ_CUDA_SIM
  return *static_cast<const uint4*>(p);
#else
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
#endif
}

#ifdef MYQ_CUDA_SIM
// ---- emulated (sim/cuda_sim.h) -------------------------------------------------------------
inline void cp_async16(void* smem, const void* gmem, bool pred) { ::sim::cp_async16(smem, gmem, pred); }
inline void cp_async_commit() { ::sim::cp_async_commit(); }
template <int N> inline void cp_async_wait() { ::sim::cp_async_wait(N); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) { ::sim::ldmatrix_x4(r, smem); }
inline void mma_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { ::sim::mma_s8(d, a, b); }
template <typename T> inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::sim::mma_16816<T>(d, a, b);
}
#else
// ---- shared memory, cp.async, ldmatrix ---------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes global -> shared asynchronously; when !pred the 16 bytes are zero-filled
// and nothing is read (src must still be a valid address; callers pass the base pointer).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(smem)));
}

// ---- tensor core mma.sync ------------------------------------------------------------------
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32 / m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16 x K, row major)  a0: row g,   a1: row g+8, a2: row g (upper K half), a3: row g+8 (upper)
//   B (K x 8, column)      b0: column g (lower K half), b1: column g (upper K half)
//   C (16 x 8)             c0, c1: row g, columns 2t, 2t+1; c2, c3: row g+8, same columns

// int8 x int8 -> int32, m16n8k32: each 32-bit register holds 4 consecutive k.
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// f16 / bf16 -> f32, m16n8k16: each 32-bit register holds 2 consecutive k.
template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                                                const uint32_t (&b)[2]);
template <> __device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                              const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                                     const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#endif  // MYQ_CUDA_SIM

// ---- small integer helpers -------------------------------------------------------------------

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Exact int -> float for 0 <= v < 2^23 in two instructions (or + sub), no I2F.
__device__ __forceinline__ float small_uint_to_float(uint32_t v) {
  return __int_as_float(0x4B000000u | v) - 8388608.0f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- the tensor-core GEMMs' accumulators and STAGES-deep cp.async pipeline ------------------

template <typename T, int A, int B, int C>
__device__ __forceinline__ void zero_fill(T (&acc)[A][B][C]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j)
#pragma unroll
      for (int e = 0; e < C; ++e) acc[i][j][e] = T(0);
}

// load_stage(stage, kt) issues the cp.async copies of K tile kt into shared buffer `stage`.
// Every call below commits one group, empty past the last tile, so that at step kt
// cp_async_wait<STAGES - 2> always means "tile kt has landed".

// Before the K loop: tiles 0 .. STAGES - 2 in flight.
template <int STAGES, typename LoadStage>
__device__ __forceinline__ void pipeline_fill(int kt_count, const LoadStage& load_stage) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kt_count) load_stage(s, s);
    cp_async_commit();
  }
}

// At the top of K step kt: wait for tile kt, then refill the buffer step kt - 1 read with
// tile kt + STAGES - 1.
template <int STAGES, typename LoadStage>
__device__ __forceinline__ void pipeline_advance(int kt, int kt_count, const LoadStage& load_stage) {
  cp_async_wait<STAGES - 2>();
  __syncthreads();  // stage kt landed for everyone; stage kt-1 is free to overwrite
  const int next = kt + STAGES - 1;
  if (next < kt_count) load_stage(next % STAGES, next);
  cp_async_commit();
}

}  // namespace myq::cuda
