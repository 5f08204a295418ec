// pack_int4 / unpack_int4: two 4-bit values per byte, element 2i in the low nibble of
// byte i and 2i + 1 in the high nibble (reference.pack_int4). Pure bandwidth: each thread
// handles 8 output (pack) or 8 input (unpack) bytes with 8- or 16-byte vector accesses
// when the pointers allow, else byte by byte.
#include "common.cuh"

namespace myq::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
pack_int4_kernel(const uint8_t* __restrict__ q, uint8_t* __restrict__ out, int64_t n_out, bool vec) {
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * 8;
  if (i0 >= n_out) return;
  if (vec && i0 + 8 <= n_out) {
    const uint4 v = *reinterpret_cast<const uint4*>(q + 2 * i0);  // 16 nibbles, one per byte
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    uint32_t r[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t packed = 0;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t u = w[2 * h + j];  // bytes b0 b1 b2 b3 -> (b0 | b1 << 4), (b2 | b3 << 4)
        const uint32_t lo = (u & 0x0Fu) | ((u >> 4) & 0xF0u);
        const uint32_t hi = ((u >> 16) & 0x0Fu) | ((u >> 20) & 0xF0u);
        packed |= (lo | (hi << 8)) << (16 * j);
      }
      r[h] = packed;
    }
    *reinterpret_cast<uint2*>(out + i0) = make_uint2(r[0], r[1]);
    return;
  }
  for (int64_t i = i0; i < i0 + 8 && i < n_out; ++i)
    out[i] = static_cast<uint8_t>((q[2 * i] & 0x0F) | ((q[2 * i + 1] & 0x0F) << 4));
}

__global__ void __launch_bounds__(kThreads)
unpack_int4_kernel(const uint8_t* __restrict__ p, uint8_t* __restrict__ out, int64_t n_in, bool vec) {
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * 8;
  if (i0 >= n_in) return;
  if (vec && i0 + 8 <= n_in) {
    const uint2 v = *reinterpret_cast<const uint2*>(p + i0);
    const uint32_t w[2] = {v.x, v.y};
    uint32_t r[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t b0 = (w[h] >> (16 * j)) & 0xFFu, b1 = (w[h] >> (16 * j + 8)) & 0xFFu;
        r[2 * h + j] = (b0 & 0x0Fu) | ((b0 >> 4) << 8) | ((b1 & 0x0Fu) << 16) | ((b1 >> 4) << 24);
      }
    }
    *reinterpret_cast<uint4*>(out + 2 * i0) = make_uint4(r[0], r[1], r[2], r[3]);
    return;
  }
  for (int64_t i = i0; i < i0 + 8 && i < n_in; ++i) {
    out[2 * i] = p[i] & 0x0F;
    out[2 * i + 1] = p[i] >> 4;
  }
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

cudaError_t pack_int4(const uint8_t* q, uint8_t* out, int64_t n_out, cudaStream_t stream) {
  if (n_out <= 0) return cudaSuccess;
  const bool vec = aligned(q, 16) && aligned(out, 8);
  const int64_t blocks = ceil_div(ceil_div(n_out, 8), kThreads);
  MYQ_LAUNCH(pack_int4_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, q, out, n_out, vec);
  return cudaGetLastError();
}

cudaError_t unpack_int4(const uint8_t* packed, uint8_t* out, int64_t n_in, cudaStream_t stream) {
  if (n_in <= 0) return cudaSuccess;
  const bool vec = aligned(packed, 8) && aligned(out, 16);
  const int64_t blocks = ceil_div(ceil_div(n_in, 8), kThreads);
  MYQ_LAUNCH(unpack_int4_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, packed, out, n_in, vec);
  return cudaGetLastError();
}

}  // namespace myq::cuda
