// Internal interface between the weight-only (W8A16 / W4A16) kernel files.
#pragma once
#include "common.cuh"

namespace myq::cuda {

// One weight-only linear problem: out[M, N] = x[M, K] @ dequant(W)^T (+ bias).
struct WxA16Problem {
  const void* x;        // [M, K], x_type, row pitch K
  DType x_type;         // also the output type
  const uint8_t* w;     // int8 [N, K] or packed int4 [N, K / 2]
  bool int4;
  const void* scale;    // int8: [N]; int4: [N, K / group_size]
  DType scale_type;
  const void* zeros;    // int4 only, [N, K / group_size]; null: zero point 8
  DType zeros_type;
  int64_t group_size;   // int4 only
  const void* bias;     // [N] or null
  DType bias_type;
  void* out;            // [M, N], x_type
  int64_t M, N, K;
};

// SIMT kernels for any shape and dtype: the small-batch (GEMV) path, and the fallback for
// shapes the tensor-core kernel does not take (K % 32 != 0, odd group sizes, fp32 x).
cudaError_t wxa16_gemv(const WxA16Problem& p, cudaStream_t stream);

// Tensor-core kernel (fp16 / bf16 x, K % 32 == 0, int4 group_size % 8 == 0).
bool wxa16_mma_supported(const WxA16Problem& p);
cudaError_t wxa16_mma(const WxA16Problem& p, cudaStream_t stream);

}  // namespace myq::cuda
