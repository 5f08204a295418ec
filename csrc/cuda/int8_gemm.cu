// W8A8 GEMM on int8 tensor cores: out[m, n] = float(sum_k A[m, k] * B[n, k]) * sa[m] * sb[n]
// + bias[n], i.e. int8 activations (per-token scale sa) times int8 weights (per-channel
// scale sb), int32 accumulation, dequant + bias fused in the epilogue.
//
// Tiling: a BM x BN block tile walks K in 64-byte steps through a STAGES-deep cp.async
// pipeline; shared tiles are [rows][64 bytes] with the 16-byte chunks XOR-swizzled so the
// ldmatrix reads are bank-conflict free. Each warp owns a WTM x WTN sub-tile of
// (WTM/16) x (WTN/8) mma.m16n8k32 accumulators. Both operands are K-contiguous ("TN"),
// which is exactly the row.col layout of mma.sync, so ldmatrix (b16, no transpose) yields
// the s8 fragments directly: 4 consecutive k per register.
// Preconditions (checked by the binding, which pads otherwise): K % 16 == 0, A and B
// 16-byte aligned. M and N are arbitrary (zero-filled loads, guarded stores).
#include "common.cuh"

namespace myq::cuda {
namespace {

constexpr int kBK = 64;  // bytes of K per pipeline stage

// byte offset of 16-byte chunk c (0..3) of row r in a [rows][64 bytes] swizzled tile
__device__ __forceinline__ int swz64(int r, int c) { return r * kBK + ((c ^ ((r >> 1) & 3)) << 4); }

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
struct Cfg {
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
  static constexpr int MI = WTM / 16, NI = WTN / 8;
  static constexpr int kAStage = BM * kBK, kBStage = BN * kBK;
  static constexpr int kSmem = STAGES * (kAStage + kBStage);
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16 x 16");
};

template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(uint8_t* s, const int8_t* g, int64_t row0, int64_t rows,
                                          int64_t k0, int64_t K) {
  constexpr int kChunks = ROWS * (kBK / 16);
#pragma unroll
  for (int it = 0; it < (kChunks + THREADS - 1) / THREADS; ++it) {
    const int i = threadIdx.x + it * THREADS;
    if (kChunks % THREADS == 0 || i < kChunks) {
      const int r = i / 4, c = i % 4;
      const int64_t gr = row0 + r, gk = k0 + c * 16;
      const bool pred = gr < rows && gk < K;
      cp_async16(s + swz64(r, c), pred ? g + gr * K + gk : g, pred);
    }
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32)
int8_gemm_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t M, int64_t N,
                 int64_t K, const float* __restrict__ sa, const void* __restrict__ sb, int sb_type,
                 const void* __restrict__ bias, int bias_type, void* __restrict__ out, int out_type) {
  using C = Cfg<BM, BN, WARPS_M, WARPS_N, STAGES>;
  MYQ_DYNAMIC_SMEM(smem_raw);
  uint8_t* As = reinterpret_cast<uint8_t*>(smem_raw);
  uint8_t* Bs = As + STAGES * C::kAStage;

  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int kt_count = static_cast<int>(ceil_div(K, kBK));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / WARPS_N) * C::WTM, wn = (warp % WARPS_N) * C::WTN;

  int acc[C::MI][C::NI][4];
  zero_fill(acc);

  auto load_stage = [&](int stage, int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * kBK;
    load_tile<BM, C::kThreads>(As + stage * C::kAStage, A, m0, M, k0, K);
    load_tile<BN, C::kThreads>(Bs + stage * C::kBStage, B, n0, N, k0, K);
  };

  pipeline_fill<STAGES>(kt_count, load_stage);

  // ldmatrix lane roles: lanes 8j..8j+7 address the rows of matrix j
  const int mat = lane >> 3, r_in = lane & 7;

  for (int kt = 0; kt < kt_count; ++kt) {
    pipeline_advance<STAGES>(kt, kt_count, load_stage);

    const uint8_t* as = As + (kt % STAGES) * C::kAStage;
    const uint8_t* bs = Bs + (kt % STAGES) * C::kBStage;
#pragma unroll
    for (int kc = 0; kc < kBK / 32; ++kc) {
      uint32_t a[C::MI][4], b[C::NI][2];
#pragma unroll
      for (int i = 0; i < C::MI; ++i) {
        // matrices: 0 rows 0-7 k 0-15, 1 rows 8-15 k 0-15, 2 rows 0-7 k 16-31, 3 rows 8-15 k 16-31
        const int r = wm + i * 16 + (mat & 1) * 8 + r_in;
        ldmatrix_x4(a[i], as + swz64(r, 2 * kc + (mat >> 1)));
      }
#pragma unroll
      for (int j = 0; j < C::NI / 2; ++j) {
        // matrices: 0 n 0-7 k 0-15, 1 n 0-7 k 16-31, 2 n 8-15 k 0-15, 3 n 8-15 k 16-31
        uint32_t r4[4];
        const int r = wn + j * 16 + (mat >> 1) * 8 + r_in;
        ldmatrix_x4(r4, bs + swz64(r, 2 * kc + (mat & 1)));
        b[2 * j][0] = r4[0];
        b[2 * j][1] = r4[1];
        b[2 * j + 1][0] = r4[2];
        b[2 * j + 1][1] = r4[3];
      }
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
#pragma unroll
        for (int j = 0; j < C::NI; ++j) mma_s8(acc[i][j], a[i], b[j]);
    }
  }
  cp_async_wait<0>();

  // epilogue: ((float(acc) * sa[m]) * sb[n]) + bias[n], rounded like the reference
  const int g = lane >> 2, t = lane & 3;
  float cs[C::NI][2], cb[C::NI][2];
#pragma unroll
  for (int j = 0; j < C::NI; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t n = n0 + wn + j * 8 + 2 * t + e;
      cs[j][e] = n < N ? load_as_float(sb, sb_type, n) : 0.0f;
      cb[j][e] = (bias != nullptr && n < N) ? load_as_float(bias, bias_type, n) : 0.0f;
    }
  const bool pairs = N % 2 == 0;  // (m, n), (m, n + 1) adjacent and 4/8-byte aligned: one store
#pragma unroll
  for (int i = 0; i < C::MI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wm + i * 16 + g + 8 * h;
      if (m >= M) continue;
      const float rs = sa[m];
#pragma unroll
      for (int j = 0; j < C::NI; ++j) {
        const int64_t n = n0 + wn + j * 8 + 2 * t;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          v[e] = __fmul_rn(__fmul_rn(__int2float_rn(acc[i][j][2 * h + e]), rs), cs[j][e]);
          if (bias != nullptr) v[e] = __fadd_rn(v[e], cb[j][e]);
        }
        if (pairs && n + 1 < N) {
          store2_from_float(out, out_type, m * N + n, v[0], v[1]);
        } else {
          if (n < N) store_from_float(out, out_type, m * N + n, v[0]);
          if (n + 1 < N) store_from_float(out, out_type, m * N + n + 1, v[1]);
        }
      }
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
cudaError_t launch(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, const float* sa,
                   const void* sb, DType sb_type, const void* bias, DType bias_type, void* out,
                   DType out_type, cudaStream_t stream) {
  using C = Cfg<BM, BN, WARPS_M, WARPS_N, STAGES>;
  auto kernel = int8_gemm_kernel<BM, BN, WARPS_M, WARPS_N, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, BN)), static_cast<unsigned>(ceil_div(M, BM)));
  MYQ_LAUNCH(kernel, grid, C::kThreads, C::kSmem, stream, A, B, M, N, K, sa, sb, sb_type, bias, bias_type,
             out, out_type);
  return cudaGetLastError();
}

}  // namespace

cudaError_t int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, const float* sa,
                      const void* sb, DType sb_type, const void* bias, DType bias_type, void* out,
                      DType out_type, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if (M <= 16)
    return launch<16, 64, 1, 4, 4>(A, B, M, N, K, sa, sb, sb_type, bias, bias_type, out, out_type, stream);
  if (M <= 64)
    return launch<64, 128, 2, 4, 4>(A, B, M, N, K, sa, sb, sb_type, bias, bias_type, out, out_type, stream);
  if (M <= 256 || N <= 128)
    return launch<128, 128, 2, 4, 4>(A, B, M, N, K, sa, sb, sb_type, bias, bias_type, out, out_type, stream);
  // large GEMMs: 64 x 64 warp tiles (fewer shared-memory reads per mma)
  return launch<128, 256, 2, 4, 4>(A, B, M, N, K, sa, sb, sb_type, bias, bias_type, out, out_type, stream);
}

}  // namespace myq::cuda
