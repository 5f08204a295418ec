// Host-side entry points of the myq CUDA kernels. Torch-free: raw pointers, sizes and a
// cudaStream_t, so the kernel files compile with plain `nvcc -c` (no torch headers) and
// the torch binding (ops_cuda.cpp) is the only translation unit that includes torch.
//
// Conventions shared by every launcher:
//  * matrices are row-major and contiguous: x [M, K], weight [N, K] (int8) or
//    packed [N, K / 2] (uint8, element 2i in the low nibble of byte i, 2i+1 in the high);
//  * scale / scales / zeros / bias may be float32, float16 or bfloat16, each named by a
//    DType code, and are read as float32 (so the binding never copies them);
//  * all arithmetic after the integer/fp16 products is float32, as in reference.py;
//  * each returns cudaGetLastError() after its launches (cudaSuccess when nothing ran).
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

namespace myq::cuda {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Per-token symmetric int8 quantization (reference.quantize_per_token):
// s[m] = max_k |x[m, k]| / 127 (float32), q[m, k] = clamp(rint(x / s), -127, 127), with
// s treated as 1 when it is 0. q has row pitch ldq >= K; q[m, K .. ldq) is set to 0.
cudaError_t quantize_per_token(const void* x, DType x_type, int64_t M, int64_t K,
                               int8_t* q, int64_t ldq, float* s, cudaStream_t stream);

// W8A8: out[m, n] = float(sum_k A[m, k] * B[n, k]) * sa[m] * sb[n] + bias[n], int32 sums on
// int8 tensor cores. A [M, K] and B [N, K] int8 with row pitch K; K must be a multiple of 16
// and A, B 16-byte aligned (the binding pads). bias may be null. out is [M, N] of out_type.
cudaError_t int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                      const float* sa, const void* sb, DType sb_type,
                      const void* bias, DType bias_type, void* out, DType out_type,
                      cudaStream_t stream);

// Weight-only int8 / int4 linear layers, x of x_type (f32, f16, bf16), out of the same type.
// W8A16: out = (x @ W^T) * scale[n] + bias[n], W int8 [N, K].
cudaError_t w8a16_linear(const void* x, DType x_type, const int8_t* W, const void* scale,
                         DType scale_type, const void* bias, DType bias_type, void* out,
                         int64_t M, int64_t N, int64_t K, cudaStream_t stream);

// W4A16: W[n, k] = (q[n, k] - zero[n, g]) * scales[n, g], g = k / group_size; zeros null means
// zero point 8 (symmetric). scales/zeros are [N, K / group_size].
cudaError_t w4a16_linear(const void* x, DType x_type, const uint8_t* packed, const void* scales,
                         DType scales_type, const void* zeros, DType zeros_type,
                         int64_t group_size, const void* bias, DType bias_type, void* out,
                         int64_t M, int64_t N, int64_t K, cudaStream_t stream);

// pack: out[i] = q[2i] | q[2i + 1] << 4 for i < n_out (q holds values 0..15).
cudaError_t pack_int4(const uint8_t* q, uint8_t* out, int64_t n_out, cudaStream_t stream);
// unpack: out[2i] = p[i] & 15, out[2i + 1] = p[i] >> 4 for i < n_in.
cudaError_t unpack_int4(const uint8_t* packed, uint8_t* out, int64_t n_in, cudaStream_t stream);

}  // namespace myq::cuda
