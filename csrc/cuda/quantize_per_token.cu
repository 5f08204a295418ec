// Per-token (row-wise) symmetric int8 quantization of the activations, the first half of
// W8A8 (int8_linear_dynamic). Must match reference.quantize_per_token bit for bit:
//   s = max|x[m, :]| / 127 in float32 (IEEE division), q = rint(x / s) (round half to
//   even, IEEE division), clamped to [-127, 127]; s = 0 rows divide by 1 instead.
// One block per row: a block-wide max, then a second pass that writes q (the row is read
// twice; the second read hits L2). The pad columns [K, ldq) of q are zeroed so the GEMM can
// run over a K rounded up to its tile.
#include "common.cuh"

namespace myq::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
quantize_per_token_kernel(const T* __restrict__ x, int64_t K, int8_t* __restrict__ q, int64_t ldq,
                          float* __restrict__ s) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  int8_t* qr = q + row * ldq;

  float amax = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) amax = fmaxf(amax, fabsf(Elem<T>::to_float(xr[k])));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  __shared__ float warp_max[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_max[warp] = amax;
  __syncthreads();
  amax = warp_max[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);

  const float scale = __fdiv_rn(amax, 127.0f);
  const float safe = scale > 0.0f ? scale : 1.0f;
  if (threadIdx.x == 0) s[row] = scale;
  for (int64_t k = threadIdx.x; k < ldq; k += kThreads) {
    int8_t v = 0;
    if (k < K) {
      const float r = rintf(__fdiv_rn(Elem<T>::to_float(xr[k]), safe));
      v = static_cast<int8_t>(fminf(fmaxf(r, -127.0f), 127.0f));
    }
    qr[k] = v;
  }
}

}  // namespace

cudaError_t quantize_per_token(const void* x, DType x_type, int64_t M, int64_t K, int8_t* q,
                               int64_t ldq, float* s, cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(M));
  switch (x_type) {
    case kF16:
      MYQ_LAUNCH(quantize_per_token_kernel<__half>, grid, kThreads, 0, stream, static_cast<const __half*>(x), K, q, ldq,
                 s);
      break;
    case kBF16:
      MYQ_LAUNCH(quantize_per_token_kernel<__nv_bfloat16>, grid, kThreads, 0, stream, static_cast<const __nv_bfloat16*>(x), K, q, ldq,
                 s);
      break;
    default:
      MYQ_LAUNCH(quantize_per_token_kernel<float>, grid, kThreads, 0, stream, static_cast<const float*>(x), K, q, ldq,
                 s);
  }
  return cudaGetLastError();
}

}  // namespace myq::cuda
