// Activations as int8 digits, so that W8A16 runs on the int8 product kernels.
//
// A row of x is scaled by a power of two 2^-e to an integer X of at most 8 * digits - 2 bits
// (e from the row's max |x|), and X is written in balanced base 256:
// X = sum_d q_d 256^d with every q_d in [-128, 127]. The scaling is exact, so the only error
// is X's rounding: below 2^-(8 digits - 2) of max|x| per element (4 digits for float32 x:
// 2^-30; 3 for bfloat16 / float16, which hold every element within 2^-14 / 2^-11 of the
// max exactly). The weights then meet each digit as raw int8, in int32 sums that are exact
// while K < 2^17 (|q_d w| <= 2^14), which is where W8A16 spent its time before: widening
// every weight byte to float or bfloat16 costs about 1 ms per 4096 x 4096 matrix here.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

template <typename T>
MYQ_TARGET_AVX512 bool split_row(const T* x, int64_t K, int digits, int64_t int4_chunk,
                                 int8_t* q, int64_t ldq, double* unit, int32_t* qsum) {
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 special = 0;  // lanes that met inf or NaN
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    const __m512 v = load_x16(x + k, mask);
    special |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN | +inf | -inf | SNaN
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
  }
  if (special) return false;
  const float amax = _mm512_reduce_max_ps(vmax);
  int top = 0;  // amax < 2^top
  if (amax > 0.f) std::frexp(amax, &top);
  const int e = top - (8 * digits - 2);
  *unit = std::ldexp(1.0, e);
  const __m512 neg_e = _mm512_set1_ps(static_cast<float>(-e));
  __m512i sums[4];
  for (int d = 0; d < digits; ++d) sums[d] = _mm512_setzero_si512();
  // The digits of 16 values v, to columns k .. k + 15 of the digit rows.
  auto put = [&](__m512 v, int64_t k) MYQ_TARGET_AVX512 {
    // scalef multiplies by 2^-e exactly; cvtps_epi32 rounds half to even.
    __m512i X = _mm512_cvtps_epi32(_mm512_scalef_ps(v, neg_e));
    for (int d = 0; d < digits; ++d) {
      const __m512i digit = _mm512_srai_epi32(_mm512_slli_epi32(X, 24), 24);  // low byte, signed
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + d * ldq + k), _mm512_cvtepi32_epi8(digit));
      sums[d] = _mm512_add_epi32(sums[d], digit);
      X = _mm512_srai_epi32(_mm512_sub_epi32(X, digit), 8);
    }
  };
  if (int4_chunk) {  // K % 32 == 0; the pad [K, ldq) is not read
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t c = 0; c < K; c += int4_chunk) {
      const int64_t half = std::min(int4_chunk, K - c) / 2;
      for (int64_t k = c; k < c + 2 * half; k += kInt4Chunk) {  // 16 even, 16 odd elements
        const __m512 a = load_x16(x + k, 0xFFFF), b = load_x16(x + k + 16, 0xFFFF);
        const int64_t at = c + (k - c) / 2;
        put(_mm512_permutex2var_ps(a, even, b), at);
        put(_mm512_permutex2var_ps(a, odd, b), at + half);
      }
    }
  } else {
    for (int64_t k = 0; k < ldq; k += 16) {
      const int64_t left = K - k;
      const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF)
                             : left > 0 ? static_cast<__mmask16>((1u << left) - 1) : __mmask16(0);
      put(load_x16(x + k, mask), k);
    }
  }
  for (int d = 0; d < digits; ++d) qsum[d] = _mm512_reduce_add_epi32(sums[d]);
  return true;
}

}  // namespace

template <typename T>
bool split_digits(const T* x, int64_t K, int digits, int64_t int4_chunk, int8_t* q, int64_t ldq,
                  double* unit, int32_t* qsum, int64_t m0, int64_t m1) {
  const int64_t per_block = x_rows_per_block(digits);
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t r = q_row(digits, m);
    if (!split_row(x + m * K, K, digits, int4_chunk, q + r * ldq, ldq, unit + m, qsum + r))
      return false;
    // The AMX kernel reads a block's spare rows (32 % digits of them) as B-tile columns whose
    // sums it ignores; zero keeps them defined.
    const int64_t used = per_block * digits;
    if (m % per_block == per_block - 1 && used < kQBlockRows)
      std::memset(q + (r + digits) * ldq, 0, (kQBlockRows - used) * ldq);
  }
  return true;
}

template bool split_digits<float>(const float*, int64_t, int, int64_t, int8_t*, int64_t, double*,
                                  int32_t*, int64_t, int64_t);
template bool split_digits<c10::BFloat16>(const c10::BFloat16*, int64_t, int, int64_t, int8_t*,
                                          int64_t, double*, int32_t*, int64_t, int64_t);
template bool split_digits<c10::Half>(const c10::Half*, int64_t, int, int64_t, int8_t*, int64_t,
                                      double*, int32_t*, int64_t, int64_t);

}  // namespace myq
