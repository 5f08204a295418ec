// Small SIMD helpers shared by the CPU kernel files.
#pragma once

#include <immintrin.h>

#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "isa.h"

namespace myq {

// The AVX-512 GEMVs' software prefetch of weights a block ahead, into L2 rather than L1: on
// Zen 4, 16 KiB ahead into a 32 KiB L1 evicted lines still in use. 4096^2 cold, M = 1, us,
// into L1 -> L2, timed in turns: int8_linear fp32 676-731 -> 547-569, bf16 717-756 ->
// 582-594; int8_linear_dynamic 702-818 -> 560-582 (M = 8: 1118-1132 -> 983-991); int4_linear
// g128 547-551 -> 485-527, bf16 536-589 -> 499-524; hot weights the same within the noise.
// The bfloat16 kernel's weight converters (bf16_linear.cpp) fetch a row's next K chunk the
// same way: bfloat16 x, 4096^2 cold, against F.linear bf16, int8 M = 16 / 128 0.95-1.02x /
// 0.91-0.95x -> 1.17-1.26x / 0.96-1.00x; int4 about the same.
inline void prefetch_to_l2(const void* p) {
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
}

// Prefetches the NR cache lines that a GEMV reading a block of NR adjacent weight rows, one
// line of each row per step, fetches at step `line` of the block `ahead` bytes on: one
// stream in address order (the whole block is contiguous) rather than one line in each of
// NR rows, which kept the hardware prefetcher behind on Zen 3 (measurements in
// int8_linear.cpp).
template <int NR>
inline void prefetch_block_lines(const void* block, int64_t ahead, int64_t line) {
  const char* p = static_cast<const char*>(block) + ahead + line * NR * 64;
  for (int j = 0; j < NR; ++j) _mm_prefetch(p + j * 64, _MM_HINT_T0);
}

// acc + the u8 x s8 dot products of each 4-byte group (vpdpbusd). In asm because GCC 12 keeps
// _mm512_dpbusd_epi32's accumulators badly: an array of 16 of them in a loop became two register
// copies per product and stack spills (block_vnni, 4096^2 M = 512 hot: 1210 GOP/s).
MYQ_TARGET_AVX512 inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "vm"(s8));
  return acc;
}

// acc + the dot products of the bfloat16 pairs in each 32-bit lane (vdpbf16ps), in asm for
// the same reason.
MYQ_TARGET_AVX512_BF16 inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
  return acc;
}

MYQ_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 weights as float32: int8 ones widened, float32 ones loaded.
MYQ_TARGET_AVX2 inline __m256 load_w8(const int8_t* w) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}
MYQ_TARGET_AVX2 inline __m256 load_w8(const float* w) { return _mm256_loadu_ps(w); }

// out[i*NR + j] = dot(x row i, weight row j) over K, i < MR (x rows K apart). The NR weight
// rows are adjacent in memory when kPrefetchBlocks > 0: they are then prefetched that many
// blocks ahead in address order (prefetch_block_lines).
template <int MR, int NR, int64_t kPrefetchBlocks, typename W>
MYQ_TARGET_AVX2 void dot_block_avx2(const float* x, int64_t K, const W* const* wr, float* out) {
  constexpr int64_t kLineWeights = 64 / sizeof(W);
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t ahead = kPrefetchBlocks * NR * K * static_cast<int64_t>(sizeof(W));
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if constexpr (kPrefetchBlocks > 0)
      if (k % kLineWeights == 0) prefetch_block_lines<NR>(wr[0], ahead, k / kLineWeights);
    __m256 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * K + k);
    for (int j = 0; j < NR; ++j) {
      const __m256 wv = load_w8(wr[j] + k);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum_avx2(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk) s += x[i * K + kk] * static_cast<float>(wr[j][kk]);
      out[i * NR + j] = s;
    }
}

// 8 activations as float32 from float32, bfloat16 or float16 x (AVX2 + F16C; see load_x16).
template <typename T>
MYQ_TARGET_AVX2 inline __m256 load_x8(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<T, c10::BFloat16>)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

// The bfloat16 bits of 32 floats (lo: elements 0-15, hi: 16-31) that bfloat16 holds exactly,
// such as widened int8 weights (|w| <= 128): a bfloat16 is the high half of the float's
// bits, and one vpermt2w gathers the high halves of 32 floats.
MYQ_TARGET_AVX512 inline __m512i exact_bf16_bits(__m512 lo, __m512 hi) {
  const __m512i odd_words = _mm512_set_epi16(
      63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
      31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(_mm512_castps_si512(lo), odd_words, _mm512_castps_si512(hi));
}

// float -> bfloat16 bits, round to nearest even, 16 lanes; NaN -> 0x7FC0, as c10::BFloat16
// rounds (the rounding add would carry a NaN's payload into its sign).
MYQ_TARGET_AVX512 inline __m256i bf16_round_bits(__m512 f) {
  __m512i bits = _mm512_castps_si512(f);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q),
                               _mm512_set1_epi32(0x7FC00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

// 16 activations as float32, lanes outside mask zero: x may be float32, bfloat16 (the high
// half of a float's bits) or float16; both widen exactly, so kernels read x in its own dtype
// rather than from a float32 copy (torch's bf16 -> fp32 copy of a 2048 x 4096 x took 9.7 ms).
template <typename T>
MYQ_TARGET_AVX512 inline __m512 load_x16(const T* p, __mmask16 mask) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (std::is_same_v<T, c10::BFloat16>)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
}

// 32 int8 as floats: (elements 0-15, elements 16-31).
MYQ_TARGET_AVX512 inline void load_i8x32_ps(const int8_t* p, __m512* lo, __m512* hi) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
}

// 16 lanes of (sum_d 256^d part_d) * unit in double, rounded to float: a row of x's value
// from its digit sums (QuantX in kernels.h). half(d, h) gives lanes 8h .. 8h + 7 of part_d
// as double.
template <typename Half>
MYQ_TARGET_AVX512 inline __m512 combine_digits(int digits, double unit, const Half& half) {
  __m512d v[2];
  for (int h = 0; h < 2; ++h) {
    v[h] = _mm512_setzero_pd();
    for (int d = digits - 1; d >= 0; --d)
      v[h] = _mm512_add_pd(_mm512_mul_pd(v[h], _mm512_set1_pd(256.0)), half(d, h));
    v[h] = _mm512_mul_pd(v[h], _mm512_set1_pd(unit));
  }
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(v[0])), _mm512_cvtpd_ps(v[1]), 1);
}

// Transposes the 16 x 16 block of 32-bit values held in v: afterwards v[j] lane i holds what
// v[i] lane j held. 64 shuffles for 256 values, where a gather takes 16 loads for 16.
MYQ_TARGET_AVX512 inline void transpose_16x16(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // lane group L of t[i]: v[i], v[i + 1] at columns 4L, 4L + 1
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // lane group L of v[i + c]: column 4L + c of rows i .. i + 3
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Column 4L + c: lane group L of v[c], v[4 + c], v[8 + c], v[12 + c], which this step reads
  // and then overwrites, so the result lands in v without a copy (a 1 KiB copy of t, which
  // GCC made a `rep movsq` in amx_pack_rows).
  for (int c = 0; c < 4; ++c) {
    const __m512i u0 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x44);
    const __m512i u1 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xEE);
    const __m512i u2 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x44);
    const __m512i u3 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xEE);
    v[c] = _mm512_shuffle_i32x4(u0, u2, 0x88);
    v[4 + c] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
    v[8 + c] = _mm512_shuffle_i32x4(u1, u3, 0x88);
    v[12 + c] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
  }
}

// The 16 values c[r + 16 j], j < 16: column r of a stored 16 x 16 tile (rows 64 bytes apart).
template <typename T>
MYQ_TARGET_AVX512 inline __m512i tile_column_bits(const T* c, int64_t r) {
  const __m512i rows = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                        48, 32, 16, 0);
  return _mm512_i32gather_epi32(rows, c + r, 4);
}

}  // namespace myq
