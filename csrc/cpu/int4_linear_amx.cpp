// W4A16 on Intel AMX-INT8: x as int8 digits (x_digits.cpp), weights as exact int8 q - zero.
//
// Per task, 32 weight rows are unpacked once into a row-major int8 buffer (the A tiles, 16
// rows x 64 bytes, load it with a row stride): each packed byte gives its two nibbles
// minus the group's integer zero point, in int4_prepare_x's order (per 16 bytes: the 16
// low nibbles, then the 16 high ones), and x's digits come in that order too. TDPBSSD
// sums one group's exact products per digit in int32; the group's sums are then scaled by
// its float32 scale into a float32 accumulator per digit column, and the epilogue
// combines the digits of each row of x (as row_value does for int8 weights).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "amx.h"
#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

constexpr int64_t kRowPair = kAmxRowPair;  // weight rows unpacked per step

// a[rr * lda + k] = q[n0 + rr, k'] - zero[n0 + rr, k' / group_size] for rr < 32, with k' the
// natural position of reordered column k; rows >= N are zero. Prefetches 32 rows ahead.
MYQ_TARGET_AVX512 void unpack_rows(const uint8_t* packed, const int8_t* zeros, int64_t group_size,
                                   int64_t K, int64_t N, int64_t n0, int8_t* a, int64_t lda) {
  const int64_t G = K / group_size;
  const int64_t ahead = prefetch_ahead(kRowPair * K / 2);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t rr = 0; rr < kRowPair; ++rr) {
    int8_t* dst = a + rr * lda;
    const int64_t n = n0 + rr;
    if (n >= N) {
      std::memset(dst, 0, K);
      continue;
    }
    const uint8_t* src = packed + n * (K / 2);
    for (int64_t g = 0; g < G; ++g) {
      const __m256i zero = _mm256_set1_epi8(zeros ? zeros[n * G + g] : 8);
      for (int64_t k = g * group_size; k < (g + 1) * group_size; k += kAmxK) {
        _mm_prefetch(reinterpret_cast<const char*>(src + k / 2) + ahead, _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k / 2));
        const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(v, low4), zero);
        const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), low4), zero);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k + 32),
                            _mm256_permute2x128_si256(lo, hi, 0x31));
      }
    }
  }
}

// One group's int32 sums into tiles 0-3 (tile (tn, tm) = rows 16 tn.. of A x q rows 16 tm..):
// A rows at a (stride lda), columns [k0, k1); q's 16-row blocks at qb and qb + 16 K.
MYQ_TARGET_AMX void group_sums(const int8_t* a, int64_t lda, const int8_t* qb, int64_t K,
                               int64_t k0, int64_t k1, int mt) {
  _tile_zero(0);
  _tile_zero(2);
  if (mt > 1) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int64_t k = k0; k < k1; k += kAmxK) {
    _tile_loadd(4, a + k, lda);
    _tile_loadd(5, a + kAmxTile * lda + k, lda);
    _tile_loadd(6, qb + k * kAmxTile, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(2, 5, 6);
    if (mt > 1) {
      _tile_loadd(7, qb + kAmxTile * K + k * kAmxTile, 64);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
  }
}

// acc[t][j][r] (+)= c[t][j][r] * scale of weight row j of tile t, with the tiles stored as
// t = tn * mt + tm (256 values each, 16 weight rows x 16 q rows).
MYQ_TARGET_AMX void add_scaled_sums(int mt, const float* scales, int64_t G, int64_t g, int64_t n0,
                                    int64_t N, bool first, int32_t* c, float* acc) {
  _tile_stored(0, c, 64);
  _tile_stored(2, c + 256 * mt, 64);
  if (mt > 1) {
    _tile_stored(1, c + 256, 64);
    _tile_stored(3, c + 768, 64);
  }
  for (int tn = 0; tn < 2; ++tn)
    for (int j = 0; j < kAmxTile; ++j) {
      const int64_t n = n0 + tn * kAmxTile + j;
      const __m512 s = _mm512_set1_ps(n < N ? scales[n * G + g] : 0.f);
      for (int tm = 0; tm < mt; ++tm) {
        const int64_t at = (tn * mt + tm) * 256 + j * kAmxTile;
        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + at)), s);
        _mm512_store_ps(acc + at, first ? v : _mm512_add_ps(_mm512_load_ps(acc + at), v));
      }
    }
}

// y[m, col .. col + cols) from the digit columns r0 .. r0 + digits - 1 of acc's tiles
// (those of one 16-column block; layout of add_scaled_sums), plus the bias.
MYQ_TARGET_AVX512 void store_row(const QuantX& x, int64_t m, const float* acc, int64_t r0,
                                 int cols, const float* bias, float* y) {
  __m512 v = combine_digits(x.digits, x.unit[m], [&](int d, int h) MYQ_TARGET_AVX512 {
    const int64_t r = r0 + d;
    const __m512 s = _mm512_castsi512_ps(tile_column_bits(acc + r / kAmxTile * 256, r % kAmxTile));
    return _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(s, 1) : _mm512_castps512_ps256(s));
  });
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
  if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias));
  _mm512_mask_storeu_ps(y, mask, v);
}

}  // namespace

void int4_linear_amx_int8(const int8_t* qp, const QuantX& x, int64_t K, const uint8_t* packed,
                          const float* scales, const int8_t* zeros, int64_t group_size,
                          const float* bias, float* y, int64_t ldy, int64_t M, int64_t N,
                          int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t G = K / group_size;
  const int64_t per_block = x_rows_per_block(x.digits);
  // 32 whole rows unpacked at a time (into L2), every block of x swept over them. Unpacking
  // group by group into L1 instead measured 5-10% slower at M = 4 and 8.
  const int64_t lda = K + 64;  // + a cache line: the rows spread over L1 sets
  int8_t* a = amx_a_buffer<int8_t>(kRowPair * lda);
  alignas(64) int32_t c[4 * 256];
  alignas(64) float acc[4 * 256];
  m1 = std::min(m1, M);
  n1 = std::min(n1, N);
  amx_begin();
  for (int64_t n = n0; n < n1; n += kRowPair) {
    unpack_rows(packed, zeros, group_size, K, N, n, a, lda);
    for (int64_t m = m0; m < m1; m += per_block) {
      const int64_t xm = std::min(per_block, m1 - m);
      const int mt = xm * x.digits > kAmxTile ? 2 : 1;
      const int8_t* qb = qp + m / per_block * kQBlockRows * K;
      for (int64_t g = 0; g < G; ++g) {
        group_sums(a, lda, qb, K, g * group_size, (g + 1) * group_size, mt);
        add_scaled_sums(mt, scales, G, g, n, N, g == 0, c, acc);
      }
      for (int tn = 0; tn < 2; ++tn) {
        const int64_t col = n + tn * kAmxTile;
        if (col >= n1) break;
        const int cols = static_cast<int>(std::min<int64_t>(kAmxTile, n1 - col));
        for (int64_t i = 0; i < xm; ++i)
          store_row(x, m + i, acc + tn * mt * 256, i * x.digits, cols, bias ? bias + col : nullptr,
                    y + (m + i) * ldy + col);
      }
    }
  }
  amx_end();
}

}  // namespace myq
