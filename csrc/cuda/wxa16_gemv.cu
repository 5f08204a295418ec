// Weight-only W8A16 / W4A16 for small batches (GEMV, M <= 4) and the SIMT fallback for
// shapes the tensor-core kernel does not take (fp32 x, K % 32 != 0, odd group sizes).
//
// Small batch is memory bound: the kernel streams the weights once with 16-byte loads
// (ld.global.nc.L1::no_allocate), warp per RW output rows, each lane a 16-byte chunk of
// each row per step (16 int8 or 32 int4 weights), dequantized in registers as in the
// reference ((q - zero) * scale in float32, int8 scale applied after the sum), x chunks
// from L1/L2 (x is small and shared by every warp), float32 accumulation, and a
// shuffle reduction per output at the end. MR rows of x per block share each weight load.
#include "wxa16.cuh"

namespace myq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 2;

template <typename T>
__device__ __forceinline__ void store_out(const WxA16Problem& p, int64_t m, int64_t n, float acc) {
  float v = acc;
  if (!p.int4) v = __fmul_rn(v, load_as_float(p.scale, p.scale_type, n));
  if (p.bias != nullptr) v = __fadd_rn(v, load_as_float(p.bias, p.bias_type, n));
  static_cast<T*>(p.out)[m * p.N + n] = Elem<T>::from_float(v);
}

template <typename T, int MR, bool INT4>
__global__ void __launch_bounds__(kThreads, 1) gemv_vec_kernel(const WxA16Problem p, int64_t m_begin) {
  constexpr int KPC = INT4 ? 32 : 16;                  // k per 16-byte weight chunk
  constexpr int XV = KPC * int(sizeof(T)) / 16;        // 16-byte x loads per chunk
  constexpr int XE = 16 / int(sizeof(T));              // x elements per 16-byte load
  constexpr int RW = kRowsPerWarp;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n_first = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * RW;
  if (n_first >= p.N) return;  // no block-level synchronization below
  const int64_t m0 = m_begin + static_cast<int64_t>(blockIdx.y) * MR;
  const int64_t K = p.K, pitch = INT4 ? K / 2 : K;
  const uint32_t gs = static_cast<uint32_t>(p.group_size);  // 32-bit divisions: no call
  const int64_t G = INT4 ? static_cast<uint32_t>(K) / gs : 1;
  const T* x = static_cast<const T*>(p.x);

  int64_t nrow[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) nrow[r] = min(n_first + r, p.N - 1);  // clamp: loads stay in bounds

  float acc[MR][RW];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;

  const int64_t chunks = K / KPC;
  // software pipeline: the next chunk's weights are in flight while this one is used
  uint4 wnext[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) wnext[r] = make_uint4(0, 0, 0, 0);
  if (lane < chunks) {
#pragma unroll
    for (int r = 0; r < RW; ++r) wnext[r] = ldg_stream16(p.w + nrow[r] * pitch + lane * 16);
  }
  for (int64_t c = lane; c < chunks; c += 32) {
    uint4 wv[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) wv[r] = wnext[r];
    if (c + 32 < chunks) {
#pragma unroll
      for (int r = 0; r < RW; ++r) wnext[r] = ldg_stream16(p.w + nrow[r] * pitch + (c + 32) * 16);
    }

    float wf[RW][KPC];
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      const uint32_t words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
      if constexpr (INT4) {
        const int64_t gi = nrow[r] * G + static_cast<uint32_t>(c * KPC) / gs;  // gs % 32 == 0 here
        const float s = load_as_float(p.scale, p.scale_type, gi);
        const float z = p.zeros != nullptr ? load_as_float(p.zeros, p.zeros_type, gi) : 8.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j)  // nibble j of word i is element 8i + j (low nibble first)
            wf[r][8 * i + j] = __fmul_rn(small_uint_to_float((words[i] >> (4 * j)) & 0xFu) - z, s);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            wf[r][4 * i + j] = static_cast<float>(static_cast<int8_t>((words[i] >> (8 * j)) & 0xFFu));
      }
    }

#pragma unroll
    for (int m = 0; m < MR; ++m) {
      if (m0 + m >= p.M) continue;
      const uint4* xp = reinterpret_cast<const uint4*>(x + (m0 + m) * K + c * KPC);
#pragma unroll
      for (int v = 0; v < XV; ++v) {
        const uint4 u = __ldg(xp + v);
        const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
        for (int i = 0; i < XE; ++i) {
          const float xf = Elem<T>::to_float(e[i]);
#pragma unroll
          for (int r = 0; r < RW; ++r) acc[m][r] = fmaf(xf, wf[r][v * XE + i], acc[m][r]);
        }
      }
    }
  }

#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      const float v = warp_sum(acc[m][r]);
      if (lane == 0 && m0 + m < p.M && n_first + r < p.N) store_out<T>(p, m0 + m, n_first + r, v);
    }
}

// Any K, any group size: one element at a time. Warp per output row n, grid.y strides M.
template <typename T, bool INT4>
__global__ void __launch_bounds__(kThreads) gemv_scalar_kernel(const WxA16Problem p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (n >= p.N) return;
  const int64_t K = p.K;
  const uint32_t gs = static_cast<uint32_t>(p.group_size);  // 32-bit divisions: no call
  const int64_t G = INT4 ? static_cast<uint32_t>(K) / gs : 1;
  const T* x = static_cast<const T*>(p.x);
  for (int64_t m = blockIdx.y; m < p.M; m += gridDim.y) {
    float acc = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
      float w;
      if constexpr (INT4) {
        const uint8_t byte = p.w[n * (K / 2) + k / 2];
        const uint32_t q = (k & 1) ? (byte >> 4) : (byte & 0xF);
        const int64_t gi = n * G + static_cast<uint32_t>(k) / gs;
        const float s = load_as_float(p.scale, p.scale_type, gi);
        const float z = p.zeros != nullptr ? load_as_float(p.zeros, p.zeros_type, gi) : 8.0f;
        w = __fmul_rn(static_cast<float>(q) - z, s);
      } else {
        w = static_cast<float>(static_cast<int8_t>(p.w[n * K + k]));
      }
      acc = fmaf(Elem<T>::to_float(x[m * K + k]), w, acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) store_out<T>(p, m, n, acc);
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T, bool INT4>
cudaError_t launch(const WxA16Problem& p, cudaStream_t stream) {
  const unsigned blocks_n = static_cast<unsigned>(ceil_div(p.N, kWarps * kRowsPerWarp));
  const bool vec = p.K % 32 == 0 && aligned16(p.x) && aligned16(p.w) && (!INT4 || p.group_size % 32 == 0);
  if (!vec) {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kWarps)), static_cast<unsigned>(p.M < 65535 ? p.M : 65535));
    auto kernel = gemv_scalar_kernel<T, INT4>;
    MYQ_LAUNCH(kernel, grid, kThreads, 0, stream, p);
    return cudaGetLastError();
  }
  const int mr = p.M <= 1 ? 1 : p.M <= 2 ? 2 : 4;
  const int64_t max_rows = static_cast<int64_t>(65535) * mr;  // grid.y limit
  for (int64_t m_begin = 0; m_begin < p.M; m_begin += max_rows) {
    const int64_t rows = p.M - m_begin < max_rows ? p.M - m_begin : max_rows;
    const dim3 grid(blocks_n, static_cast<unsigned>(ceil_div(rows, mr)));
    auto kernel = mr == 1 ? gemv_vec_kernel<T, 1, INT4> : mr == 2 ? gemv_vec_kernel<T, 2, INT4>
                                                                  : gemv_vec_kernel<T, 4, INT4>;
    MYQ_LAUNCH(kernel, grid, kThreads, 0, stream, p, m_begin);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_t(const WxA16Problem& p, cudaStream_t stream) {
  return p.int4 ? launch<T, true>(p, stream) : launch<T, false>(p, stream);
}

}  // namespace

cudaError_t wxa16_gemv(const WxA16Problem& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  switch (p.x_type) {
    case kF16: return launch_t<__half>(p, stream);
    case kBF16: return launch_t<__nv_bfloat16>(p, stream);
    default: return launch_t<float>(p, stream);
  }
}

}  // namespace myq::cuda
