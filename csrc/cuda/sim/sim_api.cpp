// extern "C" entry points over the myq CUDA launchers, for the CPU emulator build
// (all csrc/cuda/*.cu compiled as C++ with -DMYQ_CUDA_SIM); loaded by run_sim.py via ctypes.
// "Device" pointers are host pointers here; the stream is null.
#include "../common.cuh"

using namespace myq::cuda;

extern "C" {

int myq_sim_quantize_per_token(const void* x, int x_type, int64_t M, int64_t K, int8_t* q, int64_t ldq, float* s) {
  return quantize_per_token(x, DType(x_type), M, K, q, ldq, s, nullptr);
}

int myq_sim_int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, const float* sa,
                      const void* sb, int sb_type, const void* bias, int bias_type, void* out, int out_type) {
  return int8_gemm(A, B, M, N, K, sa, sb, DType(sb_type), bias, DType(bias_type), out, DType(out_type), nullptr);
}

int myq_sim_w8a16(const void* x, int x_type, const int8_t* W, const void* scale, int scale_type, const void* bias,
                  int bias_type, void* out, int64_t M, int64_t N, int64_t K) {
  return w8a16_linear(x, DType(x_type), W, scale, DType(scale_type), bias, DType(bias_type), out, M, N, K, nullptr);
}

int myq_sim_w4a16(const void* x, int x_type, const uint8_t* packed, const void* scales, int scales_type,
                  const void* zeros, int zeros_type, int64_t group_size, const void* bias, int bias_type, void* out,
                  int64_t M, int64_t N, int64_t K) {
  return w4a16_linear(x, DType(x_type), packed, scales, DType(scales_type), zeros, DType(zeros_type), group_size,
                      bias, DType(bias_type), out, M, N, K, nullptr);
}

int myq_sim_pack_int4(const uint8_t* q, uint8_t* out, int64_t n_out) { return pack_int4(q, out, n_out, nullptr); }
int myq_sim_unpack_int4(const uint8_t* p, uint8_t* out, int64_t n_in) { return unpack_int4(p, out, n_in, nullptr); }

}  // extern "C"
