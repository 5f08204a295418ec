// Weight-only W8A16 / W4A16 on fp16 / bf16 tensor cores (mma.sync m16n8k16, f32 accumulate),
// weights dequantized in registers, plus the public w8a16_linear / w4a16_linear entry points
// that pick this kernel or the SIMT GEMV (wxa16_gemv.cu).
//
// Tiling: a BM x BN block tile walks K in BK steps through a STAGES-deep cp.async pipeline;
// WARPS_K > 1 splits each stage's K range over warps, summed through shared memory at the end.
// x tiles are fp16/bf16 [BM][BK]; weight tiles hold the raw bytes ([BN][BK] int8 or
// [BN][BK/2] packed int4), so the weights cross the memory bus at 1 or 0.5 byte each.
// 16-byte chunks are XOR-swizzled per row so the fragment loads below are conflict free.
//
// K permutation: a dot product does not care in which order k is summed, as long as x and
// W use the same order. Within each 32-wide k slice, lane (g, t) = (lane/4, lane%4) feeds
// the two m16n8k16 steps with k = 8t .. 8t+7 of that slice (step 0: 8t..8t+3, step 1:
// 8t+4..8t+7), instead of the mma's native k = {2t, 2t+1, 2t+8, 2t+9}. Then one 16-byte
// shared load gives a lane its x fragments for both steps, and one 8-byte (int8) or
// 4-byte (int4: 8 nibbles) load its weights, which it dequantizes ((q - zero) * scale in
// float32 for int4; q exactly, scale in the epilogue for int8) and packs into f16x2/bf16x2.
// Preconditions (wxa16_mma_supported): x fp16/bf16, K % 32 == 0, int4 group_size % 8 == 0,
// x and W 16-byte aligned. M and N are arbitrary (zero-filled loads, guarded stores).
#include "wxa16.cuh"

namespace myq::cuda {
namespace {

// Swizzled byte offset of 16-byte chunk c of row r, for tiles with RB-byte rows.
template <int RB> __device__ __forceinline__ int swz_x(int r, int c) {  // x tile, RB >= 128
  static_assert(RB % 128 == 0, "x rows must be whole 128-byte lines");
  return r * RB + ((c ^ (((r & 1) << 2) | ((r >> 1) & 3))) << 4);
}
template <int RB> __device__ __forceinline__ int swz_w8(int r, int c) {  // int8 weight tile
  static_assert(RB == 64 || RB % 128 == 0, "unsupported int8 weight row size");
  const int f = RB == 64 ? ((((r >> 1) & 1) << 1) | ((r >> 2) & 1)) : ((r & 3) << 1);
  return r * RB + ((c ^ f) << 4);
}
template <int RB> __device__ __forceinline__ int swz_w4(int r, int c) {  // packed int4 weight tile
  static_assert(RB == 32 || RB == 64 || RB % 128 == 0, "unsupported int4 weight row size");
  const int f = RB == 32 ? ((r >> 2) & 1) : RB == 64 ? ((r >> 1) & 3) : (r & 7);
  return r * RB + ((c ^ f) << 4);
}

#ifdef MYQ_CUDA_SIM
inline uint4 lds128(const void* p) { return *static_cast<const uint4*>(p); }
inline uint2 lds64(const void* p) { return *static_cast<const uint2*>(p); }
inline uint32_t lds32(const void* p) { return *static_cast<const uint32_t*>(p); }
#else
__device__ __forceinline__ uint4 lds128(const void* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(smem_addr(p)));
  return v;
}
__device__ __forceinline__ uint2 lds64(const void* p) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(smem_addr(p)));
  return v;
}
__device__ __forceinline__ uint32_t lds32(const void* p) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(smem_addr(p)));
  return v;
}
#endif

template <typename T, bool INT4, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES>
struct Cfg {
  static constexpr int kThreads = WARPS_M * WARPS_N * WARPS_K * 32;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
  static constexpr int MI = WTM / 16, NI = WTN / 8;
  static constexpr int kXRow = BK * 2;                   // bytes per x tile row
  static constexpr int kWRow = INT4 ? BK / 2 : BK;       // bytes per weight tile row
  static constexpr int kXStage = BM * kXRow, kWStage = BN * kWRow;
  static constexpr int kSmem = STAGES * (kXStage + kWStage);
  static constexpr int kSlicesPerWarp = BK / 32 / WARPS_K;  // 32-wide k slices per warp per stage
  static constexpr int kAcc = MI * NI * 4;                  // accumulators per thread
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % 64 == 0, "bad tile shape");
  static_assert(kSlicesPerWarp * WARPS_K * 32 == BK, "BK must split evenly over the K warps");
  static_assert((WARPS_K - 1) * WARPS_M * WARPS_N * 32 * kAcc * 4 <= kSmem, "no room for the K reduction");
};

template <typename T, bool INT4, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * WARPS_K * 32)
wxa16_mma_kernel(const WxA16Problem p) {
  using C = Cfg<T, INT4, BM, BN, BK, WARPS_M, WARPS_N, WARPS_K, STAGES>;
  MYQ_DYNAMIC_SMEM(smem_raw);
  uint8_t* Xs = reinterpret_cast<uint8_t*>(smem_raw);
  uint8_t* Ws = Xs + STAGES * C::kXStage;

  const int64_t M = p.M, N = p.N, K = p.K;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int kt_count = static_cast<int>(ceil_div(K, BK));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  // warp (wk, wm, wn): K-slice wk of every stage, rows wm.., columns wn.. of the block tile
  const int wk = warp / (WARPS_M * WARPS_N), wmn = warp % (WARPS_M * WARPS_N);
  const int wm = (wmn / WARPS_N) * C::WTM, wn = (wmn % WARPS_N) * C::WTN;
  const T* x = static_cast<const T*>(p.x);
  const uint8_t* w = p.w;
  const int64_t w_pitch = INT4 ? K / 2 : K;

  auto load_stage = [&](int stage, int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * BK;
    uint8_t* xs = Xs + stage * C::kXStage;
    constexpr int kXChunks = BM * (C::kXRow / 16);
#pragma unroll
    for (int it = 0; it < (kXChunks + C::kThreads - 1) / C::kThreads; ++it) {
      const int i = threadIdx.x + it * C::kThreads;
      if (kXChunks % C::kThreads == 0 || i < kXChunks) {
        const int r = i / (C::kXRow / 16), c = i % (C::kXRow / 16);
        const int64_t gm = m0 + r, gk = k0 + c * 8;
        const bool pred = gm < M && gk < K;
        cp_async16(xs + swz_x<C::kXRow>(r, c), pred ? x + gm * K + gk : x, pred);
      }
    }
    uint8_t* ws = Ws + stage * C::kWStage;
    constexpr int kWChunks = BN * (C::kWRow / 16);
    constexpr int kPerChunk = INT4 ? 32 : 16;  // k per 16-byte weight chunk
#pragma unroll
    for (int it = 0; it < (kWChunks + C::kThreads - 1) / C::kThreads; ++it) {
      const int i = threadIdx.x + it * C::kThreads;
      if (kWChunks % C::kThreads == 0 || i < kWChunks) {
        const int r = i / (C::kWRow / 16), c = i % (C::kWRow / 16);
        const int64_t gn = n0 + r, gk = k0 + c * kPerChunk;
        const bool pred = gn < N && gk < K;
        int off;
        if constexpr (INT4) off = swz_w4<C::kWRow>(r, c);
        else off = swz_w8<C::kWRow>(r, c);
        cp_async16(ws + off, pred ? w + gn * w_pitch + gk / (INT4 ? 2 : 1) : w, pred);
      }
    }
  };

  float acc[C::MI][C::NI][4];
  zero_fill(acc);

  pipeline_fill<STAGES>(kt_count, load_stage);

  const uint32_t gs = INT4 ? static_cast<uint32_t>(p.group_size) : 1u;
  const uint32_t groups = INT4 ? static_cast<uint32_t>(K) / gs : 1u;

  for (int kt = 0; kt < kt_count; ++kt) {
    pipeline_advance<STAGES>(kt, kt_count, load_stage);

    const uint8_t* xs = Xs + (kt % STAGES) * C::kXStage;
    const uint8_t* ws = Ws + (kt % STAGES) * C::kWStage;
#pragma unroll
    for (int kci = 0; kci < C::kSlicesPerWarp; ++kci) {
      const int kc = wk * C::kSlicesPerWarp + kci;
      // x fragments for both k16 steps: row g and g+8, k = 8t .. 8t+7 of this 32-slice
      uint32_t a[C::MI][2][4];
#pragma unroll
      for (int i = 0; i < C::MI; ++i) {
        const int r = wm + i * 16 + g;
        const uint4 lo = lds128(xs + swz_x<C::kXRow>(r, 4 * kc + t));
        const uint4 hi = lds128(xs + swz_x<C::kXRow>(r + 8, 4 * kc + t));
        a[i][0][0] = lo.x; a[i][0][1] = hi.x; a[i][0][2] = lo.y; a[i][0][3] = hi.y;
        a[i][1][0] = lo.z; a[i][1][1] = hi.z; a[i][1][2] = lo.w; a[i][1][3] = hi.w;
      }
      // weight fragments: column g of each n8 tile, the same 8 k, dequantized
      uint32_t b[C::NI][2][2];
      const int64_t kg = static_cast<int64_t>(kt) * BK + kc * 32 + 8 * t;  // first k of this lane
      uint32_t grp = 0;
      if constexpr (INT4) grp = static_cast<uint32_t>(kg) / gs;
#pragma unroll
      for (int j = 0; j < C::NI; ++j) {
        const int nl = wn + j * 8 + g;
        float q[8];
        if constexpr (INT4) {
          const uint32_t v = lds32(ws + swz_w4<C::kWRow>(nl, kc) + 4 * t);
          const int64_t n = n0 + nl;
          float s = 0.0f, z = 0.0f;
          if (n < N && kg < K) {
            const int64_t gi = n * groups + grp;
            s = load_as_float(p.scale, p.scale_type, gi);
            z = p.zeros != nullptr ? load_as_float(p.zeros, p.zeros_type, gi) : 8.0f;
          }
#pragma unroll
          for (int e = 0; e < 8; ++e)  // byte e/2, low nibble first
            q[e] = __fmul_rn(small_uint_to_float((v >> (4 * e)) & 0xFu) - z, s);
        } else {
          const uint2 v = lds64(ws + swz_w8<C::kWRow>(nl, 2 * kc + (t >> 1)) + 8 * (t & 1));
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            q[e] = static_cast<float>(static_cast<int8_t>((v.x >> (8 * e)) & 0xFFu));
            q[4 + e] = static_cast<float>(static_cast<int8_t>((v.y >> (8 * e)) & 0xFFu));
          }
        }
        b[j][0][0] = Elem<T>::pack2(q[0], q[1]);
        b[j][0][1] = Elem<T>::pack2(q[2], q[3]);
        b[j][1][0] = Elem<T>::pack2(q[4], q[5]);
        b[j][1][1] = Elem<T>::pack2(q[6], q[7]);
      }
#pragma unroll
      for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int i = 0; i < C::MI; ++i)
#pragma unroll
          for (int j = 0; j < C::NI; ++j) mma_16816<T>(acc[i][j], a[i][s], b[j][s]);
    }
  }
  cp_async_wait<0>();

  if constexpr (WARPS_K > 1) {  // sum the K-slices: warps wk > 0 hand their tiles to wk = 0
    __syncthreads();            // every stage consumed: the pipeline memory is free
    float* red = reinterpret_cast<float*>(smem_raw);
    if (wk > 0) {
      float* mine = red + ((static_cast<size_t>(wk - 1) * WARPS_M * WARPS_N + wmn) * 32 + lane) * C::kAcc;
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
#pragma unroll
        for (int j = 0; j < C::NI; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) mine[(i * C::NI + j) * 4 + e] = acc[i][j][e];
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int w = 1; w < WARPS_K; ++w) {
      const float* other = red + ((static_cast<size_t>(w - 1) * WARPS_M * WARPS_N + wmn) * 32 + lane) * C::kAcc;
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
#pragma unroll
        for (int j = 0; j < C::NI; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][e] += other[(i * C::NI + j) * 4 + e];
    }
  }

  // epilogue: int8: acc * scale[n] (+ bias); int4: acc (+ bias). Columns 2t, 2t+1 of a tile are
  // adjacent: one 4-byte store when N is even (then the pair is 4-byte aligned).
  T* out = static_cast<T*>(p.out);
  const bool pairs = N % 2 == 0;
#pragma unroll
  for (int j = 0; j < C::NI; ++j) {
    const int64_t n = n0 + wn + j * 8 + 2 * t;
    if (n >= N) continue;
    float cs[2], cb[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const bool ok = n + e < N;
      cs[e] = (INT4 || !ok) ? 1.0f : load_as_float(p.scale, p.scale_type, n + e);
      cb[e] = (p.bias != nullptr && ok) ? load_as_float(p.bias, p.bias_type, n + e) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < C::MI; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm + i * 16 + g + 8 * h;
        if (m >= M) continue;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          v[e] = acc[i][j][2 * h + e];
          if (!INT4) v[e] = __fmul_rn(v[e], cs[e]);
          if (p.bias != nullptr) v[e] = __fadd_rn(v[e], cb[e]);
        }
        if (pairs && n + 1 < N) {
          *reinterpret_cast<uint32_t*>(out + m * N + n) = Elem<T>::pack2(v[0], v[1]);
        } else {
          out[m * N + n] = Elem<T>::from_float(v[0]);
          if (n + 1 < N) out[m * N + n + 1] = Elem<T>::from_float(v[1]);
        }
      }
  }
}

template <typename T, bool INT4, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES>
cudaError_t launch(const WxA16Problem& p, cudaStream_t stream) {
  using C = Cfg<T, INT4, BM, BN, BK, WARPS_M, WARPS_N, WARPS_K, STAGES>;
  auto kernel = wxa16_mma_kernel<T, INT4, BM, BN, BK, WARPS_M, WARPS_N, WARPS_K, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, BN)), static_cast<unsigned>(ceil_div(p.M, BM)));
  MYQ_LAUNCH(kernel, grid, C::kThreads, C::kSmem, stream, p);
  return cudaGetLastError();
}

template <typename T, bool INT4>
cudaError_t launch_for_m(const WxA16Problem& p, cudaStream_t stream) {
  // Small batches are bound by the weight stream: narrow column tiles (many blocks) with the
  // K range of each stage split over two warps, deep pipeline. Larger batches: big tiles.
  if (p.M <= 16) return launch<T, INT4, 16, 32, 256, 1, 2, 2, 4>(p, stream);
  if (p.M <= 64) return launch<T, INT4, 64, 128, 64, 2, 4, 1, 4>(p, stream);
  return launch<T, INT4, 128, 128, 64, 2, 4, 1, 4>(p, stream);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Batches up to this size take the SIMT GEMV (memory bound, one weight pass); above it
// the tensor-core kernel.
constexpr int64_t kGemvMaxM = 4;

cudaError_t run(const WxA16Problem& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (p.M > kGemvMaxM && wxa16_mma_supported(p)) return wxa16_mma(p, stream);
  return wxa16_gemv(p, stream);
}

}  // namespace

bool wxa16_mma_supported(const WxA16Problem& p) {
  return (p.x_type == kF16 || p.x_type == kBF16) && p.K % 32 == 0 && aligned16(p.x) && aligned16(p.w) &&
         (!p.int4 || p.group_size % 8 == 0);
}

cudaError_t wxa16_mma(const WxA16Problem& p, cudaStream_t stream) {
  if (p.x_type == kF16) return p.int4 ? launch_for_m<__half, true>(p, stream) : launch_for_m<__half, false>(p, stream);
  return p.int4 ? launch_for_m<__nv_bfloat16, true>(p, stream) : launch_for_m<__nv_bfloat16, false>(p, stream);
}

cudaError_t w8a16_linear(const void* x, DType x_type, const int8_t* W, const void* scale, DType scale_type,
                         const void* bias, DType bias_type, void* out, int64_t M, int64_t N, int64_t K,
                         cudaStream_t stream) {
  WxA16Problem p{x, x_type, reinterpret_cast<const uint8_t*>(W), false, scale, scale_type, nullptr, kF32, 0,
                 bias, bias_type, out, M, N, K};
  return run(p, stream);
}

cudaError_t w4a16_linear(const void* x, DType x_type, const uint8_t* packed, const void* scales,
                         DType scales_type, const void* zeros, DType zeros_type, int64_t group_size,
                         const void* bias, DType bias_type, void* out, int64_t M, int64_t N, int64_t K,
                         cudaStream_t stream) {
  WxA16Problem p{x, x_type, packed, true, scales, scales_type, zeros, zeros_type, group_size,
                 bias, bias_type, out, M, N, K};
  return run(p, stream);
}

}  // namespace myq::cuda
