// Kernel entry points of the CPU backend: raw pointers, no tensors, no threading.
//
// The ATen binding (ops_cpu.cpp) checks and prepares tensors, converts activations to
// float32 (or keeps bfloat16 for the tiled large-M path), splits the work with
// at::parallel_for and calls these on disjoint blocks of output columns [n0, n1).
// Every function takes the ISA path to run (see isa.h); all paths give the same results
// up to float summation order (the W8A8 integer sums are exact on every path).
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "isa.h"

namespace myq {

// Software-prefetch distance for weight rows that a kernel streams a block at a time
// (block_bytes: the contiguous rows it reads together): a whole number of blocks ahead, so
// the line belongs to rows read next rather than to a row of the current block, and at
// least 16 KiB ahead, which keeps enough DRAM reads in flight (measured on 4096-wide int8
// rows: 8 KiB ahead 19 GB/s, 16 or 32 KiB 21 GB/s, 1 KiB within the row 17 GB/s).
inline int64_t prefetch_ahead(int64_t block_bytes) {
  constexpr int64_t kMinAhead = 16384;
  return block_bytes <= 0 ? kMinAhead : (kMinAhead + block_bytes - 1) / block_bytes * block_bytes;
}

// The small-M GEMVs (int8_gemv, int4_gemv) pass over each column block with at most 4 rows of x
// at a time; 5 rows left go as 3 + 2, so that a one-row pass (MR = 1, which has its own AVX2
// form in int4_gemv) only ever happens when x is one row.
constexpr int gemv_rows_per_pass(int64_t left) {
  return left == 5 ? 3 : left >= 4 ? 4 : static_cast<int>(left);
}

// ---- W8A16 (int8_linear.cpp) ---------------------------------------------------------
// Small M: y[m*ldy + n] = (sum_k x[m*K + k] * w[n*K + k]) * scale[n] + bias[n] for every
// m < M and n in [n0, n1). x float32 [M, K] contiguous; bias may be null.
void int8_gemv(Isa isa, const float* x, int64_t M, int64_t K, const int8_t* w,
               const float* scale, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1);
// The same with bfloat16 x [M, K] on AVX512-BF16 (cpu_has_bf16_gemm), in vdpbf16ps.
void int8_gemv_bf16(const c10::BFloat16* x, int64_t M, int64_t K, const int8_t* w,
                    const float* scale, const float* bias, float* y, int64_t ldy, int64_t n0,
                    int64_t n1);

// Large M: tile[(n - n0)*K + k] = w[n*K + k]. Float32 only: torch's bfloat16 GEMM rounds its
// product to bfloat16, and the column scale after it would round a second time.
void int8_dequant(Isa isa, const int8_t* w, int64_t K, int64_t n0, int64_t n1, float* tile);

// ---- W4A16 (int4_linear.cpp) ---------------------------------------------------------
// The small-M kernel reads activations reordered in chunks of 32: chunk c holds
// x[32c + 0, 2, ..., 30] then x[32c + 1, 3, ..., 31], matching the nibble order of 16
// packed bytes. It needs group_size % kInt4Chunk == 0 (K is a multiple of group_size).
constexpr int64_t kInt4Chunk = 32;
bool int4_gemv_supported(int64_t group_size);
// xp[m*K + ...] = x reordered as above; xsum[m*G + g] = sum of x[m, group g] (float32).
void int4_prepare_x(const float* x, int64_t M, int64_t K, int64_t group_size, float* xp,
                    float* xsum);
void int4_prepare_x(const c10::BFloat16* x, int64_t M, int64_t K, int64_t group_size,
                    c10::BFloat16* xp, float* xsum);
// y[m*ldy + n] = sum_k x[m, k] * (q[n, k] - zeros[n, g]) * scales[n, g] + bias[n],
// g = k / group_size; scales and zeros float32 [N, K/group_size]; zeros null means 8.
// x in natural order, and xp / xsum from int4_prepare_x: AVX2 from kPanelMinM rows reads x
// (float32 panels, int4_linear.cpp), every other path xp / xsum, which may be null where
// int4_gemv_reads_xp says the path does not read them.
constexpr int64_t kPanelMinM = 12;
constexpr bool int4_gemv_reads_xp(Isa isa, int64_t M) {
  return !(isa == Isa::Avx2 && M >= kPanelMinM);
}
void int4_gemv(Isa isa, const float* x, const float* xp, const float* xsum, int64_t M,
               int64_t K, const uint8_t* packed, const float* scales, const float* zeros,
               int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1);
// The same for bfloat16 x on AVX512-BF16 (cpu_has_bf16_gemm): xp and xsum from
// int4_prepare_x on bfloat16 x.
void int4_gemv_bf16(const c10::BFloat16* xp, const float* xsum, int64_t M, int64_t K,
                    const uint8_t* packed, const float* scales, const float* zeros,
                    int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
                    int64_t n1);
// tile[(n - n0)*K + k] = (q[n, k] - zeros[n, g]) * scales[n, g] in natural k order.
template <typename T>  // float or c10::BFloat16 (rounded to nearest even)
void int4_dequant(Isa isa, const uint8_t* packed, const float* scales, const float* zeros,
                  int64_t group_size, int64_t K, int64_t n0, int64_t n1, T* tile);

// ---- int8 x int8 products (int8_gemm_dynamic.cpp, x_digits.cpp) -----------------------
// Both W8A8 and (on AVX-512 VNNI / AMX) W8A16 multiply int8 weights with an int8 form of x,
// with exact int32 sums. Row m of x is held by `digits` consecutive rows of q from
// q_row(digits, m):
//   digits == 1, W8A8: x[m, :] ~ rs[m] * q[m, :], per-token quantization (quantize_rows);
//   digits == 3 or 4, W8A16: x[m, :] = unit[m] * sum_d 256^d q[q_row + d, :] up to
//     2^-(8 digits - 2) max|x[m, :]| (split_digits), so weights meet x as raw int8 bytes
//     and are never widened; float32 x takes 4 digits, bfloat16 / float16 x 3.
// q rows come in blocks of kQBlockRows (two AMX tiles), 32 / digits rows of x per block.
// Rows of q are padded to ldq = round_up(K, kQuantPad) bytes (pad is zero).
constexpr int64_t kQuantPad = 64;
inline int64_t quant_row_bytes(int64_t K) { return (K + kQuantPad - 1) / kQuantPad * kQuantPad; }
constexpr int64_t kQBlockRows = 32;
struct QuantX {
  const int8_t* q;
  int64_t ldq;
  const int32_t* qsum;  // sum over k of each q row
  int digits;
  const float* rs;      // digits == 1: the row scales
  const double* unit;   // digits > 1: 2^e per row of x, the value of the lowest digit
};
inline int64_t x_rows_per_block(int digits) { return kQBlockRows / digits; }
inline int64_t q_row(int digits, int64_t m) {
  const int64_t per_block = x_rows_per_block(digits);
  return m / per_block * kQBlockRows + m % per_block * digits;
}
// Rows of q that M rows of x take.
inline int64_t q_rows(int digits, int64_t M) { return M == 0 ? 0 : q_row(digits, M - 1) + digits; }

// x is float, c10::BFloat16 or c10::Half (read in its own dtype).
// Per row m in [m0, m1): rs[m] = max|x[m, :]| / 127, q = round_half_even(x / rs) clamped to
// [-127, 127] (0 for an all-zero row), qsum[m] = sum_k q[m, k]. digits == 1.
template <typename T>
void quantize_rows(Isa isa, const T* x, int64_t K, int8_t* q, int64_t ldq, float* rs,
                   int32_t* qsum, int64_t m0, int64_t m1);
// The digits of x rows [m0, m1) into q, unit and qsum as QuantX describes (AVX-512 only);
// int4_chunk 0: natural k order; else (K % 32 == 0) k reordered in chunks of int4_chunk
// (the last one may be shorter), each holding its even elements then its odd ones, the
// order in which the low and high nibbles of its packed bytes meet them: kInt4Chunk for the
// AMX kernel (as int4_prepare_x), kInt4DigitStep for int4_gemv_digits.
// Returns false, leaving the rows partly written, if a row holds inf or NaN.
template <typename T>
bool split_digits(const T* x, int64_t K, int digits, int64_t int4_chunk, int8_t* q,
                  int64_t ldq, double* unit, int32_t* qsum, int64_t m0, int64_t m1);
// W4A16 with x as digits on AVX-512 VNNI (int4_linear.cpp): x from split_digits with
// int4_chunk = kInt4DigitStep (3 or 4 digits), xsum[m*G + g] = the sum of x[m, group g]
// (int4_group_sums); otherwise as int4_gemv, for rows of x [0, M). Needs
// int4_gemv_supported(group_size).
constexpr int64_t kInt4DigitStep = 128;
void int4_gemv_digits(const QuantX& x, const float* xsum, int64_t M, int64_t K,
                      const uint8_t* packed, const float* scales, const float* zeros,
                      int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
                      int64_t n1);
template <typename T>  // float, c10::BFloat16 or c10::Half
void int4_group_sums(const T* x, int64_t M, int64_t K, int64_t group_size, float* xsum);

// y[m*ldy + n] = (x's int32 sums, combined per row of x) * scale[n] + bias[n], for rows of x
// m in [m0, m1), n in [n0, n1). W8A8 rounds as the reference: float(sum) * rs[m] * scale[n].
// AVX2 and scalar take digits == 1 only.
void int8_gemm_dynamic(Isa isa, const QuantX& x, int64_t K, const int8_t* w,
                       const float* scale, const float* bias, float* y, int64_t ldy,
                       int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// Product tiles of 16 n x 16 q rows, int32, with q re-laid out by amx_pack_rows as AMX B
// tiles: isa avx512_amx multiplies AMX tiles (the weight rows as A tiles, 16 rows x 64 bytes,
// read in place; needs K % kAmxK == 0); avx512_vnni broadcasts 4-byte groups of the weight
// rows against 16 q rows at a time (needs K % 4 == 0). Handles output columns [n0, n1) with
// n0, n1 multiples of 16 (the caller runs the last N % 16 columns with int8_gemm_dynamic) and
// rows of x [m0, m1) with m0 a multiple of x_rows_per_block(digits).
constexpr int64_t kAmxK = 64;
constexpr int64_t kAmxTile = 16;
// qp: q in B-tile layout, amx_pack_rows (amx.h) with row_bytes = K over q_rows(digits, M)
// rows, padded with zero rows to a multiple of kQBlockRows.
void int8_gemm_tiles(Isa isa, const int8_t* qp, const QuantX& x, int64_t K, const int8_t* w,
                     const float* scale, const float* bias, float* y, int64_t ldy, int64_t M,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// ---- W4A16 on AMX-INT8 (int4_linear_amx.cpp) -----------------------------------------
// x as digits in int4 order (split_digits with int4_chunk = kInt4Chunk, packed as for int8_gemm_tiles);
// zeros int8 [N, K / group_size] integers with q - zero in int8 (null: 8); group_size % 64 == 0.
// y[m*ldy + n] = sum_k x[m, k] * (q[n, k] - zeros[n, g]) * scales[n, g] + bias[n] for rows of
// x [m0, m1) (m0 a multiple of x_rows_per_block(digits)) and columns [n0, n1).
void int4_linear_amx_int8(const int8_t* qp, const QuantX& x, int64_t K, const uint8_t* packed,
                          const float* scales, const int8_t* zeros, int64_t group_size,
                          const float* bias, float* y, int64_t ldy, int64_t M, int64_t N,
                          int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// ---- W8A16 / W4A16 on bfloat16 dot products (bf16_linear.cpp) -------------------------
// isa avx512_amx: AMX-BF16 tiles; avx512_vnni (on a CPU with AVX512-BF16): vdpbf16ps.
// x is packed once (amx_pack_rows with row_bytes = 2K, 16-row blocks); each thread converts
// 32 weight rows at a time to bfloat16 (int8: exact; int4 with bfloat16 x:
// (q - zero) * scale rounded to bfloat16, as in int4_dequant; int4 with float x: q - zero,
// exact, each group's sum scaled in float32) and the dot products accumulate exact products
// in float32. y[m, n] for m in [m0, m1) (m0 a multiple of 16), n in [n0, n1) (n0 a
// multiple of 32): int8: acc * scale[n] + bias[n]; int4: acc + bias[n].
// x may come as several bfloat16 planes whose sum is x exactly (float32 x = 3 planes, float16
// x = 2): every plane meets the same converted weights, so float x costs extra products but
// no extra weight conversion.
constexpr int64_t kAmxBf16K = 32;  // K per step: K % 32 == 0, int4 group_size % 32 == 0
struct XPlanes {
  const c10::BFloat16* data;  // plane p of the packed x at data + p * stride
  int64_t stride;             // bfloat16 elements
  int count;
};
// The planes of float32 (3) or float16 (2) x [rows_total, K], each packed as amx_pack_rows
// packs bfloat16 x, for the 16-row blocks [b0, b1): plane p at dst + p * plane_stride.
// inf and NaN stay in the first plane (the rest 0 there), so they reach y as in a float product.
template <typename T>  // float or c10::Half
void pack_x_planes(const T* x, int64_t K, int64_t rows_total, c10::BFloat16* dst,
                   int64_t plane_stride, int64_t b0, int64_t b1);
// Their y, row m at data + m * ld elements: float32, or x's bfloat16 / float16, to which the
// epilogue rounds the float32 result to nearest even (as y.to(dtype) rounds it).
enum class YType { Float, BFloat16, Half };
struct YRows {
  void* data;
  int64_t ld;
  YType type;
};
void int8_linear_bf16(Isa isa, const XPlanes& x, int64_t K, const int8_t* w, const float* scale,
                      const float* bias, const YRows& y, int64_t M, int64_t N, int64_t m0,
                      int64_t m1, int64_t n0, int64_t n1);
void int4_linear_bf16(Isa isa, const XPlanes& x, int64_t K, const uint8_t* packed,
                      const float* scales, const float* zeros, int64_t group_size,
                      const float* bias, const YRows& y, int64_t M, int64_t N, int64_t m0,
                      int64_t m1, int64_t n0, int64_t n1);

// ---- int4 packing (int4_pack.cpp) ----------------------------------------------------
// out[i] = q[2i] | (q[2i+1] << 4) (mod 256), i < n_out.
void pack_int4(Isa isa, const uint8_t* q, uint8_t* out, int64_t n_out);
// out[2i] = p[i] & 15, out[2i+1] = p[i] >> 4, i < n_in.
void unpack_int4(Isa isa, const uint8_t* p, uint8_t* out, int64_t n_in);

}  // namespace myq
