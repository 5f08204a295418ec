// ATen binding of the CUDA kernels (csrc/cuda/*.cu): the only CUDA translation unit that
// includes torch headers. Checks every precondition once, with a message naming the
// argument, flattens x [..., K] to [M, K], makes the operands contiguous, allocates the
// output on the current stream's allocator and calls the torch-free launchers of
// myq_cuda.h on the current stream. Scales, zero points and bias are read in their own
// dtype (float32 / float16 / bfloat16) by the kernels, so nothing is converted per call.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "myq_cuda.h"

namespace myq::cuda {
namespace {

DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "unreachable: dtype ", t.scalar_type(), " is not float32/float16/bfloat16");
  }
}

bool is_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

void check_on(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "myq::", op, ": ", name, " must be on ", x.device(),
              " like x, got ", t.device());
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), "myq::", op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(is_float(x), "myq::", op, ": x must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "myq::", op, ": x must have at least one dimension [..., K]");
}

// A scale, zero-point or bias tensor ([N], or [N, K // group_size]); absent is fine.
void check_float_param(const std::optional<at::Tensor>& t, const at::Tensor& x, at::IntArrayRef shape,
                       const char* op, const char* name) {
  if (!t.has_value()) return;
  check_on(*t, x, op, name);
  TORCH_CHECK(is_float(*t), "myq::", op, ": ", name, " must be float32, bfloat16 or float16, got ",
              t->scalar_type());
  TORCH_CHECK(t->sizes() == shape, "myq::", op, ": ", name, " must have shape ", shape, ", got ", t->sizes());
}

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "myq::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(n);
  return shape;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Contiguous and 16-byte aligned (the vector loads need it; a view at an odd offset is copied).
at::Tensor dense(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return aligned16(c) ? c : c.clone();
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }
DType dtype_or_f32(const std::optional<at::Tensor>& t) { return t.has_value() ? dtype_code(*t) : kF32; }
std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// A linear op on x [..., K] with N outputs, on x's device: launch(out, M) fills out, the
// [M, N] result in x's dtype, which returns as [..., N]. Nothing is launched for an empty
// result, nor for K == 0: every dot product is empty, the result is the bias (or 0).
template <typename Launch>
at::Tensor linear_op(const at::Tensor& x, int64_t N, const std::optional<at::Tensor>& bias, const Launch& launch) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1);
  if (K == 0) {
    at::Tensor y = at::zeros(out_shape(x, N), x.options().dtype(at::kFloat));
    if (bias.has_value()) y.add_(bias->to(at::kFloat));
    return y.to(x.scalar_type());
  }
  const int64_t M = x.numel() / K;
  at::Tensor out = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) launch(out, M);
  return out.reshape(out_shape(x, N));
}

void check_int8_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const std::optional<at::Tensor>& bias, const char* op) {
  check_x(x, op);
  check_on(weight, x, op, "weight");
  TORCH_CHECK(weight.scalar_type() == at::kChar, "myq::", op, ": weight must be int8, got ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2, "myq::", op, ": weight must be 2-D [N, K], got shape ", weight.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "myq::", op, ": x.shape[-1] (", x.size(-1),
              ") must equal weight.shape[1] (K=", weight.size(1), ")");
  check_float_param(scale, x, {weight.size(0)}, op, "scale");
  check_float_param(bias, x, {weight.size(0)}, op, "bias");
}

at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_linear";
  check_int8_args(x, weight, scale, bias, op);
  const int64_t N = weight.size(0), K = weight.size(1);
  return linear_op(x, N, bias, [&](at::Tensor& out, int64_t M) {
    const at::Tensor x2 = dense(x.reshape({M, K})), w = dense(weight), s = scale.contiguous();
    const std::optional<at::Tensor> b = contiguous_opt(bias);
    check_cuda(w8a16_linear(x2.data_ptr(), dtype_code(x2), w.data_ptr<int8_t>(), s.data_ptr(), dtype_code(s),
                            ptr_or_null(b), dtype_or_f32(b), out.data_ptr(), M, N, K,
                            c10::cuda::getCurrentCUDAStream()),
               op);
  });
}

at::Tensor int8_linear_dynamic_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_linear_dynamic";
  check_int8_args(x, weight, scale, bias, op);
  const int64_t N = weight.size(0), K = weight.size(1);
  return linear_op(x, N, bias, [&](at::Tensor& out, int64_t M) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    // The int8 GEMM walks K in 16-byte chunks: pad K to a multiple of 16 with zeros.
    const int64_t Kp = (K + 15) / 16 * 16;
    const at::Tensor x2 = x.reshape({M, K}).contiguous();
    at::Tensor q = at::empty({M, Kp}, x.options().dtype(at::kChar));
    at::Tensor row_scale = at::empty({M}, x.options().dtype(at::kFloat));
    check_cuda(quantize_per_token(x2.data_ptr(), dtype_code(x2), M, K, q.data_ptr<int8_t>(), Kp,
                                  row_scale.data_ptr<float>(), stream),
               op);
    const at::Tensor w = Kp == K ? dense(weight) : at::constant_pad_nd(weight, {0, Kp - K}, 0).contiguous();
    const at::Tensor s = scale.contiguous();
    const std::optional<at::Tensor> b = contiguous_opt(bias);
    check_cuda(int8_gemm(q.data_ptr<int8_t>(), w.data_ptr<int8_t>(), M, N, Kp, row_scale.data_ptr<float>(),
                         s.data_ptr(), dtype_code(s), ptr_or_null(b), dtype_or_f32(b), out.data_ptr(),
                         dtype_code(out), stream),
               op);
  });
}

at::Tensor int4_linear_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                            const std::optional<at::Tensor>& zeros, int64_t group_size,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int4_linear";
  check_x(x, op);
  check_on(packed, x, op, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "myq::", op,
              ": packed must be uint8 holding two 4-bit values per byte, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() == 2, "myq::", op, ": packed must be 2-D [N, K // 2], got shape ", packed.sizes());
  const int64_t N = packed.size(0), K = x.size(-1);
  TORCH_CHECK(K % 2 == 0, "myq::", op, ": x.shape[-1] (K=", K, ") must be even");
  TORCH_CHECK(packed.size(1) * 2 == K, "myq::", op, ": packed.shape[1] (", packed.size(1),
              ") must equal K // 2 = ", K / 2, " for x.shape[-1] = ", K);
  TORCH_CHECK(group_size > 0 && group_size % 2 == 0 && (K == 0 || K % group_size == 0), "myq::", op,
              ": group_size (", group_size, ") must be a positive even divisor of K (", K, ")");
  const int64_t groups = K / group_size;
  check_float_param(scales, x, {N, groups}, op, "scales");
  check_float_param(zeros, x, {N, groups}, op, "zeros");
  check_float_param(bias, x, {N}, op, "bias");
  return linear_op(x, N, bias, [&](at::Tensor& out, int64_t M) {
    const at::Tensor x2 = dense(x.reshape({M, K})), w = dense(packed), s = scales.contiguous();
    const std::optional<at::Tensor> z = contiguous_opt(zeros), b = contiguous_opt(bias);
    check_cuda(w4a16_linear(x2.data_ptr(), dtype_code(x2), w.data_ptr<uint8_t>(), s.data_ptr(), dtype_code(s),
                            ptr_or_null(z), dtype_or_f32(z), group_size, ptr_or_null(b), dtype_or_f32(b),
                            out.data_ptr(), M, N, K, c10::cuda::getCurrentCUDAStream()),
               op);
  });
}

at::Tensor pack_int4_cuda(const at::Tensor& q) {
  constexpr const char* op = "pack_int4";
  TORCH_CHECK(q.is_cuda(), "myq::", op, ": q must be a CUDA tensor, got ", q.device());
  TORCH_CHECK(at::isIntegralType(q.scalar_type(), /*includeBool=*/false), "myq::", op,
              ": q must be an integer tensor of values 0..15, got ", q.scalar_type());
  TORCH_CHECK(q.dim() >= 1 && q.size(-1) % 2 == 0, "myq::", op,
              ": q.shape[-1] must be even to pack two values per byte, got shape ", q.sizes());
  const c10::cuda::CUDAGuard guard(q.device());
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
  shape.back() /= 2;
  const at::Tensor src = q.to(at::kByte).contiguous();
  at::Tensor out = at::empty(shape, q.options().dtype(at::kByte));
  check_cuda(pack_int4(src.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), out.numel(),
                       c10::cuda::getCurrentCUDAStream()),
             op);
  return out;
}

at::Tensor unpack_int4_cuda(const at::Tensor& packed) {
  constexpr const char* op = "unpack_int4";
  TORCH_CHECK(packed.is_cuda(), "myq::", op, ": packed must be a CUDA tensor, got ", packed.device());
  TORCH_CHECK(packed.scalar_type() == at::kByte, "myq::", op,
              ": packed must be uint8 holding two 4-bit values per byte, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() >= 1, "myq::", op, ": packed must have at least one dimension");
  const c10::cuda::CUDAGuard guard(packed.device());
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape.back() *= 2;
  const at::Tensor src = packed.contiguous();
  at::Tensor out = at::empty(shape, packed.options());
  check_cuda(unpack_int4(src.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), src.numel(),
                         c10::cuda::getCurrentCUDAStream()),
             op);
  return out;
}

}  // namespace
}  // namespace myq::cuda

TORCH_LIBRARY_IMPL(myq, CUDA, m) {
  m.impl("int8_linear", &myq::cuda::int8_linear_cuda);
  m.impl("int8_linear_dynamic", &myq::cuda::int8_linear_dynamic_cuda);
  m.impl("int4_linear", &myq::cuda::int4_linear_cuda);
  m.impl("pack_int4", &myq::cuda::pack_int4_cuda);
  m.impl("unpack_int4", &myq::cuda::unpack_int4_cuda);
}
