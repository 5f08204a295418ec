// Small SIMD helpers shared by the CPU kernel files.
#pragma once

#include <immintrin.h>

#include "isa.h"

namespace myq {

MYQ_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
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

// 32 int8 as floats: (elements 0-15, elements 16-31).
MYQ_TARGET_AVX512 inline void load_i8x32_ps(const int8_t* p, __m512* lo, __m512* hi) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
}

}  // namespace myq
