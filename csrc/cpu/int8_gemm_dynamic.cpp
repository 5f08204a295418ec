// int8 x int8 -> int32 products of weights with an int8 form of x (QuantX in kernels.h):
// W8A8's per-token quantization, or W8A16's digits of x (x_digits.cpp).
//
// quantize_rows: row absmax / 127, IEEE division, round half to even, clamp to +-127
// (bit-identical to reference.quantize_per_token).
// int8_gemm_dynamic: a register-blocked dot-product microkernel, MR rows of q x NR
// weight rows, K in 64-byte steps. AVX-512 VNNI uses vpdpbusd (u8 x s8): the weights
// are made unsigned by flipping their sign bit (w + 128) and the excess 128 * sum_k q[m, k]
// is subtracted per row of q, so no pass over the weights is needed (and the int32
// arithmetic is exact modulo 2^32, hence exact whenever the true sum fits int32).
// AVX2 uses vpmaddubsw on |w| and q * sign(w), then vpmaddwd by ones (exact, no saturation).
// int8_gemm_tiles: 16 x 16 int32 product tiles of weight rows x rows of q packed as AMX B
// tiles, 2x2 per pass (32 weight rows x 32 rows of q): Intel AMX, signed x signed TDPBSSD,
// or AVX-512 VNNI broadcasting 4 bytes of a weight row against 16 rows of q (q made unsigned,
// the excess 128 * sum_k w[n, k] subtracted per weight row). The tiles hold each output in
// one lane, so unlike the dot kernel no horizontal sums are needed.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "amx.h"
#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

constexpr int kNR = 4;

// ---------------------------------------------------------------- quantization
template <typename T>
void quantize_row_scalar(const T* x, int64_t K, int8_t* q, int64_t ldq, float* rs,
                         int32_t* qsum) {
  float amax = 0.f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(static_cast<float>(x[k])));
  const float s = amax / 127.0f;
  const float safe = s > 0.f ? s : 1.f;
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    float r = std::nearbyint(static_cast<float>(x[k]) / safe);  // default rounding mode: half to even
    r = std::min(127.f, std::max(-127.f, r));
    q[k] = static_cast<int8_t>(r);
    sum += q[k];
  }
  for (int64_t k = K; k < ldq; ++k) q[k] = 0;
  *rs = s;
  *qsum = sum;
}

template <typename T>
MYQ_TARGET_AVX512 void quantize_row_avx512(const T* x, int64_t K, int8_t* q, int64_t ldq,
                                           float* rs, int32_t* qsum) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load_x16(x + k, mask)));
  }
  const float s = _mm512_reduce_max_ps(vmax) / 127.0f;
  const __m512 safe = _mm512_set1_ps(s > 0.f ? s : 1.f);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  __m512i vsum = _mm512_setzero_si512();
  for (int64_t k = 0; k < ldq; k += 16) {
    const int64_t left = K - k;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF)
                           : left > 0 ? static_cast<__mmask16>((1u << left) - 1) : __mmask16(0);
    // cvtps_epi32 rounds with MXCSR's mode: to nearest even.
    __m512i v = _mm512_cvtps_epi32(_mm512_div_ps(load_x16(x + k, mask), safe));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    v = _mm512_maskz_mov_epi32(mask, v);
    vsum = _mm512_add_epi32(vsum, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtepi32_epi8(v));
  }
  *rs = s;
  *qsum = _mm512_reduce_add_epi32(vsum);
}

// The scalar row's arithmetic 8 lanes at a time (its division and rounding are IEEE, so the
// results are bit-identical): 256 x 576 float32 x took 0.56 ms in the scalar loop, a quarter
// of a demo-model layer's W8A8 product at that M.
template <typename T>
MYQ_TARGET_AVX2 void quantize_row_avx2(const T* x, int64_t K, int8_t* q, int64_t ldq, float* rs,
                                       int32_t* qsum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(load_x8(x + k), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0.f;
  for (float v : lanes) amax = std::max(amax, v);
  for (int64_t kk = k; kk < K; ++kk) amax = std::max(amax, std::fabs(static_cast<float>(x[kk])));
  const float s = amax / 127.0f;
  const float safe = s > 0.f ? s : 1.f;
  const __m256 vsafe = _mm256_set1_ps(safe);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i vsum = _mm256_setzero_si256();
  for (k = 0; k + 8 <= K; k += 8) {
    // cvtps_epi32 rounds with MXCSR's mode: to nearest even, as nearbyint.
    __m256i v = _mm256_cvtps_epi32(_mm256_div_ps(load_x8(x + k), vsafe));
    v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
    vsum = _mm256_add_epi32(vsum, v);
    const __m128i v16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(v16, v16));
  }
  alignas(32) int32_t sums[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(sums), vsum);
  int32_t sum = 0;
  for (int32_t v : sums) sum += v;
  for (; k < K; ++k) {
    const float r = std::min(127.f, std::max(-127.f, std::nearbyint(static_cast<float>(x[k]) / safe)));
    q[k] = static_cast<int8_t>(r);
    sum += q[k];
  }
  for (; k < ldq; ++k) q[k] = 0;
  *rs = s;
  *qsum = sum;
}

// ---------------------------------------------------------------- scalar dot
int32_t dot_scalar(const int8_t* q, const int8_t* w, int64_t K) {
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(q[k]) * static_cast<int32_t>(w[k]);
  return acc;
}

// ---------------------------------------------------------------- AVX-512 VNNI
// out[i*kNR + j] = sum_k q[i, k] * w_j[k], exact. kPrefetch: the weight rows come from memory
// (the first pass over them); later passes find them in L1, where the prefetches only take
// load slots (4096^2 hot, M = 128 / 512: 80 -> 89% / 61 -> 74% of torch._int_mm without them).
template <int MR, bool kPrefetch>
MYQ_TARGET_AVX512 void block_vnni(const int8_t* q, int64_t ldq, const int32_t* qsum, int64_t K,
                                  const int8_t* const* wr, int32_t* out) {
  __m512i acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t ahead = prefetch_ahead(kNR * K);
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512i qv[MR];
    for (int i = 0; i < MR; ++i) qv[i] = _mm512_loadu_si512(q + i * ldq + k);
    for (int j = 0; j < kNR; ++j) {
      if constexpr (kPrefetch)
        prefetch_to_l2(wr[j] + k + ahead);
      const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(wr[j] + k), flip);
      for (int i = 0; i < MR; ++i) acc[i][j] = dpbusd(acc[i][j], wv, qv[i]);
    }
  }
  if (k < K) {  // q is zero-padded to ldq >= round_up(K, 64): masked-off weights meet q = 0
    const __mmask64 mask = (~0ull) >> (64 - (K - k));
    __m512i qv[MR];
    for (int i = 0; i < MR; ++i) qv[i] = _mm512_loadu_si512(q + i * ldq + k);
    for (int j = 0; j < kNR; ++j) {
      const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, wr[j] + k), flip);
      for (int i = 0; i < MR; ++i) acc[i][j] = dpbusd(acc[i][j], wv, qv[i]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j)
      out[i * kNR + j] = static_cast<int32_t>(
          static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[i][j])) -
          128u * static_cast<uint32_t>(qsum[i]));
}

// One row of W8A8's q (decode): block_vnni's arithmetic over one weight row at a time, read in
// address order and left to the hardware prefetcher. Zen 4, 2 threads, weights cycled through
// 256 MB, block_vnni -> row_vnni in turns, us: 4096^2 407-565 -> 350-500 (torch's amax over
// the same weight copies: 364-482); 4096 x 11008 1085-1302 -> 990-1126; 1536 x 576 71-82 ->
// 36-47; 11008 x 4096 1452-1499 -> 1412-1492. A software prefetch 16 KiB ahead, as block_vnni
// has, took 4096^2 back to 418-552 and 1536 x 576 to 53-61.
MYQ_TARGET_AVX512 int32_t row_vnni(const int8_t* q, int32_t qsum, int64_t K, const int8_t* w) {
  __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t k = 0;
  for (; k + 128 <= K; k += 128)
    for (int c = 0; c < 2; ++c)
      acc[c] = dpbusd(acc[c], _mm512_xor_si512(_mm512_loadu_si512(w + k + 64 * c), flip),
                      _mm512_loadu_si512(q + k + 64 * c));
  for (; k < K; k += 64) {  // q is zero-padded to ldq >= round_up(K, 64), as in block_vnni
    const __mmask64 mask = K - k >= 64 ? ~0ull : (~0ull) >> (64 - (K - k));
    acc[0] = dpbusd(acc[0], _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + k), flip),
                    _mm512_loadu_si512(q + k));
  }
  return static_cast<int32_t>(
      static_cast<uint32_t>(_mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))) -
      128u * static_cast<uint32_t>(qsum));
}

// ---------------------------------------------------------------- AVX2
MYQ_TARGET_AVX2 inline int32_t hsum_epi32_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// vpmaddubsw multiplies unsigned by signed bytes, so |w| meets q * sign(w): each int16 pair sum
// is at most 2 * 128 * 127 = 32512 (q is in [-127, 127]), never saturated, then vpmaddwd by
// ones widens to int32. Measured on Zen 3 (one core, L2): 38-43 G multiply-adds/s against 30
// for widening both to int16 and vpmaddwd.
// Weights are prefetched in address order kPrefetchBlocks blocks (16 rows) ahead, as
// int8_linear's AVX2 GEMV does: 1536 x 576 cold, alternating processes, M=1 128-175 ->
// 85-92 us, M=2 161-209 -> 78-88; 4096^2 M=1 the same within the noise.
constexpr int64_t kPrefetchBlocks = 4;

template <int MR>
MYQ_TARGET_AVX2 void block_avx2(const int8_t* q, int64_t ldq, const int32_t* qsum, int64_t K,
                                const int8_t* const* wr, int32_t* out) {
  (void)qsum;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t ahead = kPrefetchBlocks * kNR * K;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if ((k & 63) == 0) prefetch_block_lines<kNR>(wr[0], ahead, k / 64);
    for (int j = 0; j < kNR; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[j] + k));
      const __m256i w_abs = _mm256_abs_epi8(w);
      for (int i = 0; i < MR; ++i) {
        const __m256i qs = _mm256_sign_epi8(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i * ldq + k)), w);
        acc[i][j] = _mm256_add_epi32(acc[i][j],
                                     _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, qs), ones));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j)
      out[i * kNR + j] = hsum_epi32_avx2(acc[i][j]) + dot_scalar(q + i * ldq + k, wr[j] + k, K - k);
}

template <int MR, Isa kIsa>
void run_block(const int8_t* q, int64_t ldq, const int32_t* qsum, int64_t K,
               const int8_t* const* wr, bool first_pass, int32_t* out) {
  if constexpr (kIsa == Isa::Avx512Vnni) {
    if (first_pass) block_vnni<MR, true>(q, ldq, qsum, K, wr, out);
    else block_vnni<MR, false>(q, ldq, qsum, K, wr, out);
  } else if constexpr (kIsa == Isa::Avx2) block_avx2<MR>(q, ldq, qsum, K, wr, out);
  else
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNR; ++j) out[i * kNR + j] = dot_scalar(q + i * ldq, wr[j], K);
}

// The output of row m of x before the column scale, from its `digits` int32 sums acc[d * stride]:
// W8A8 float(acc) * rs[m], as the reference rounds; digits combined exactly in double
// (|sum| < 2^53 while K < 2^17), then scaled by the power of two unit[m].
inline float row_value(const QuantX& x, int64_t m, const int32_t* acc, int stride) {
  if (x.digits == 1) return static_cast<float>(acc[0]) * x.rs[m];
  double v = 0.0;
  for (int d = x.digits - 1; d >= 0; --d) v = v * 256.0 + acc[d * stride];
  return static_cast<float>(v * x.unit[m]);
}

template <Isa kIsa>
void gemm(const QuantX& x, int64_t K, const int8_t* w, const float* scale, const float* bias,
          float* y, int64_t ldy, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int kMaxMR = kIsa == Isa::Avx512Vnni ? 4 : 2;
  // Rows of x per block: up to kMaxMR single-row (W8A8) ones, or one row of `digits` q rows.
  const int64_t per_block = x.digits == 1 ? kMaxMR : 1;
  int32_t out[kMaxMR * kNR];
  // y[m, n] from row m's digit sums acc[d * stride], in the reference's operation order:
  // ((acc * row scale) * scale) + bias. This is plain (non-FMA) code: baseline x86-64 has no
  // FMA to contract into.
  auto store = [&](int64_t m, int64_t n, const int32_t* acc, int stride) {
    float v = row_value(x, m, acc, stride);
    v = v * scale[n];
    if (bias) v = v + bias[n];
    y[m * ldy + n] = v;
  };
  if constexpr (kIsa == Isa::Avx512Vnni) {
    if (m1 - m0 == 1 && x.digits == 1) {
      const int64_t r = q_row(1, m0);
      for (int64_t n = n0; n < n1; ++n) {
        const int32_t acc = row_vnni(x.q + r * x.ldq, x.qsum[r], K, w + n * K);
        store(m0, n, &acc, 1);
      }
      return;
    }
  }
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const int nr = static_cast<int>(std::min<int64_t>(kNR, n1 - nb));
    const int8_t* wr[kNR];
    for (int j = 0; j < kNR; ++j) wr[j] = w + (nb + std::min(j, nr - 1)) * K;
    for (int64_t m = m0; m < m1; m += per_block) {
      const int xm = static_cast<int>(std::min<int64_t>(per_block, m1 - m));
      const int64_t r = q_row(x.digits, m);
      const int8_t* qm = x.q + r * x.ldq;
      const int32_t* qs = x.qsum + r;
      switch (xm * x.digits) {
        case 1: run_block<1, kIsa>(qm, x.ldq, qs, K, wr, m == m0, out); break;
        case 2: run_block<2, kIsa>(qm, x.ldq, qs, K, wr, m == m0, out); break;
        case 3: if constexpr (kMaxMR >= 3) run_block<3, kIsa>(qm, x.ldq, qs, K, wr, m == m0, out); break;
        default: if constexpr (kMaxMR >= 4) run_block<4, kIsa>(qm, x.ldq, qs, K, wr, m == m0, out); break;
      }
      for (int i = 0; i < xm; ++i)
        for (int j = 0; j < nr; ++j) store(m + i, nb + j, out + i * x.digits * kNR + j, kNR);
    }
  }
}

// ---------------------------------------------------------------- AMX
// c[(t * 16 + n) * 16 + m] = sum_k w[n0 + 16 * (t / MT) + n, k] * q[16 * (t % MT) + m, k]
// for the NT x MT product tiles t; w0 = row n0 of w, qb = packed block of q's first row.
constexpr int64_t kPrefetchSteps = 2;

template <int NT, int MT>
MYQ_TARGET_AMX void amx_block(const int8_t* w0, int64_t K, const int8_t* qb, bool streaming,
                              int32_t* c) {
  const int64_t qblock = K * kAmxTile;  // bytes of one packed 16-row block of q
  _tile_zero(0);
  if constexpr (MT > 1) _tile_zero(1);
  if constexpr (NT > 1) _tile_zero(2);
  if constexpr (NT > 1 && MT > 1) _tile_zero(3);
  for (int64_t k = 0; k < K; k += kAmxK) {
    // With two q tiles and the weights used once (streaming: one q block per task), the tile
    // products no longer hide the weight loads' latency: fetch each row's line two k-steps
    // ahead. Measured, 4096 x 4096 cold: W8A8 M=32 935-952 -> 855-894 us, W8A16 fp32 M=8
    // 923-945 -> 871-887 us; with one q tile, or several q blocks per task, it cost 3-7%.
    if constexpr (MT > 1) {
      if (streaming && k + kPrefetchSteps * kAmxK < K)
        for (int r = 0; r < NT * kAmxTile; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(w0 + r * K + k + kPrefetchSteps * kAmxK),
                       _MM_HINT_T0);
    }
    _tile_loadd(4, w0 + k, K);
    if constexpr (NT > 1) _tile_loadd(5, w0 + kAmxTile * K + k, K);
    _tile_loadd(6, qb + k * kAmxTile, 64);
    if constexpr (MT > 1) _tile_loadd(7, qb + qblock + k * kAmxTile, 64);
    _tile_dpbssd(0, 4, 6);
    if constexpr (MT > 1) _tile_dpbssd(1, 4, 7);
    if constexpr (NT > 1) _tile_dpbssd(2, 5, 6);
    if constexpr (NT > 1 && MT > 1) _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  if constexpr (MT > 1) _tile_stored(1, c + 256, 64);
  if constexpr (NT > 1) _tile_stored(2, c + 256 * MT, 64);
  if constexpr (NT > 1 && MT > 1) _tile_stored(3, c + 256 * 3, 64);
}

// sums[r] = sum_k w0[r * K + k] for `rows` weight rows, exact.
MYQ_TARGET_AVX512 void weight_row_sums(const int8_t* w0, int64_t K, int rows, int32_t* sums) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int r = 0; r < rows; ++r) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 mask = K - k >= 64 ? ~0ull : (~0ull) >> (64 - (K - k));
      acc = dpbusd(acc, ones, _mm512_maskz_loadu_epi8(mask, w0 + r * K + k));
    }
    sums[r] = _mm512_reduce_add_epi32(acc);
  }
}

// amx_block's product tiles from AVX-512 VNNI on CPUs without AMX: NR weight rows at a time,
// each 4-byte group of a row broadcast against the MT vectors of 16 q rows of the packed
// block (made unsigned, q + 128), over all of K; the excess 128 * sum_k w[n, k] (wsum, one per
// weight row from w0) comes off at the end. Each output sums in one lane: block_vnni's dot
// products end in a horizontal sum per output. Flipping q rather than the broadcast weights
// takes MT instead of NR xors per step: with an xor per broadcast, 4096^2 M = 128 / 512 ran
// 1.28 / 1.07x slower (measured by leaving the xor out).
template <int MT, int NR>
MYQ_TARGET_AVX512 void vnni_rows(const int8_t* w0, int64_t K, const int8_t* qb,
                                 const int32_t* wsum, int r0, int32_t* c) {
  const int64_t qblock = K * kAmxTile;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[NR][MT];
  for (int r = 0; r < NR; ++r)
    for (int tm = 0; tm < MT; ++tm) acc[r][tm] = _mm512_setzero_si512();
  for (int64_t g = 0; g < K / 4; ++g) {
    __m512i qv[MT];
    for (int tm = 0; tm < MT; ++tm)
      qv[tm] = _mm512_xor_si512(_mm512_loadu_si512(qb + tm * qblock + 4 * kAmxTile * g), flip);
    for (int r = 0; r < NR; ++r) {
      int32_t four;
      std::memcpy(&four, w0 + (r0 + r) * K + 4 * g, sizeof(four));
      const __m512i wv = _mm512_set1_epi32(four);
      for (int tm = 0; tm < MT; ++tm) acc[r][tm] = dpbusd(acc[r][tm], qv[tm], wv);
    }
  }
  for (int r = 0; r < NR; ++r) {
    const int row = r0 + r;
    const __m512i excess = _mm512_set1_epi32(static_cast<int32_t>(128u * static_cast<uint32_t>(wsum[row])));
    for (int tm = 0; tm < MT; ++tm)
      _mm512_storeu_si512(c + ((row / kAmxTile) * MT + tm) * 256 + (row % kAmxTile) * kAmxTile,
                          _mm512_sub_epi32(acc[r][tm], excess));
  }
}

// 16 NT weight rows in groups of 8 (16 accumulators; groups of 12 ran 0.9x).
template <int NT, int MT>
MYQ_TARGET_AVX512 void vnni_block(const int8_t* w0, int64_t K, const int8_t* qb,
                                  const int32_t* wsum, int32_t* c) {
  constexpr int kGroup = 8;
  for (int r0 = 0; r0 < NT * kAmxTile; r0 += kGroup) vnni_rows<MT, kGroup>(w0, K, qb, wsum, r0, c);
}

// y[m, 16 columns] from the product tiles of one 16-column block (c: MT tiles of 16 n x 16
// q rows, see amx_block) whose q rows r0 .. r0 + digits - 1 hold row m of x; row_value's
// arithmetic, 16 columns at a time. W8A8 keeps the reference's rounding: the _round_
// intrinsics are never contracted into FMAs.
MYQ_TARGET_AVX512 void store_tile_row(const QuantX& x, int64_t m, const int32_t* c, int64_t r0,
                                      const float* scale, const float* bias, float* y) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  // Column r of the tile pair holding q row r (tiles 256 values apart).
  auto sums = [&](int64_t r) MYQ_TARGET_AVX512 {
    return tile_column_bits(c + r / kAmxTile * 256, r % kAmxTile);
  };
  __m512 v;
  if (x.digits == 1) {
    v = _mm512_mul_round_ps(_mm512_cvtepi32_ps(sums(r0)), _mm512_set1_ps(x.rs[m]), kRound);
  } else {
    v = combine_digits(x.digits, x.unit[m], [&](int d, int h) MYQ_TARGET_AVX512 {
      const __m512i s = sums(r0 + d);
      return _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(s, 1) : _mm512_castsi512_si256(s));
    });
  }
  v = _mm512_mul_round_ps(v, _mm512_loadu_ps(scale), kRound);
  if (bias) v = _mm512_add_round_ps(v, _mm512_loadu_ps(bias), kRound);
  _mm512_storeu_ps(y, v);
}

// One 16 x 16 block of 4-byte values: `rows` rows of `columns` values, stride bytes apart at
// src (the rest 0), to dst as one 16-row vector per column. kWhole (16 x 16) has fixed trip
// counts, so GCC keeps the block in registers; with the counts as variables it kept it on the
// stack and copied it with `rep movsq` (Zen 4, int8_linear bf16 576 x 1536, M = 512: 13.8% of
// the profile's samples, 3-6.5% after).
template <bool kWhole>
MYQ_TARGET_AVX512 inline void pack_block(const char* src, int64_t stride, int64_t rows,
                                         int64_t columns, int32_t* dst) {
  const __mmask16 cols = kWhole ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << columns) - 1);
  __m512i v[kAmxTile];
  for (int64_t r = 0; r < kAmxTile; ++r)
    v[r] = kWhole || r < rows ? _mm512_maskz_loadu_epi32(cols, src + r * stride) : _mm512_setzero_si512();
  transpose_16x16(v);
  for (int64_t c = 0; c < (kWhole ? kAmxTile : columns); ++c) _mm512_storeu_si512(dst + c * kAmxTile, v[c]);
}

}  // namespace

// 16 4-byte columns of a 16-row block at a time, as a 16 x 16 transpose in registers: one
// gather per column took ~25 ms for the 8192 digit rows of a 2048 x 4096 float32 x.
MYQ_TARGET_AVX512 void amx_pack_rows(const void* src, int64_t row_bytes, int64_t src_stride,
                                     int64_t rows_total, void* dst, int64_t b0, int64_t b1) {
  const int64_t groups = row_bytes / 4;
  const char* s = static_cast<const char*>(src);
  for (int64_t b = b0; b < b1; ++b) {
    int32_t* d = static_cast<int32_t*>(dst) + b * kAmxTile * groups;
    const int64_t valid = std::min<int64_t>(kAmxTile, std::max<int64_t>(0, rows_total - b * kAmxTile));
    const char* block = s + b * kAmxTile * src_stride;
    for (int64_t g = 0; g < groups; g += kAmxTile) {
      const int64_t count = std::min<int64_t>(kAmxTile, groups - g);
      if (valid == kAmxTile && count == kAmxTile)
        pack_block<true>(block + 4 * g, src_stride, valid, count, d + g * kAmxTile);
      else
        pack_block<false>(block + 4 * g, src_stride, valid, count, d + g * kAmxTile);
    }
  }
}

void int8_gemm_tiles(Isa isa, const int8_t* qp, const QuantX& x, int64_t K, const int8_t* w,
                     const float* scale, const float* bias, float* y, int64_t ldy, int64_t M,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  alignas(64) int32_t c[4 * 256];
  int32_t wsum[2 * kAmxTile];
  const int digits = x.digits;
  const int64_t per_block = x_rows_per_block(digits);
  m1 = std::min(m1, M);
  const bool streaming = m1 - m0 <= per_block;  // each weight row meets one q block
  const bool amx = isa == Isa::Avx512Amx;
  if (amx) amx_begin();
  for (int64_t n = n0; n < n1; n += 2 * kAmxTile) {
    const int nt = n + 2 * kAmxTile <= n1 ? 2 : 1;
    const int8_t* w0 = w + n * K;
    if (!amx) weight_row_sums(w0, K, nt * kAmxTile, wsum);
    for (int64_t m = m0; m < m1; m += per_block) {
      const int64_t xm = std::min(per_block, m1 - m);
      const int mt = xm * digits > kAmxTile ? 2 : 1;
      const int8_t* qb = qp + m / per_block * kQBlockRows * K;
      if (amx) {
        if (nt == 2 && mt == 2) amx_block<2, 2>(w0, K, qb, streaming, c);
        else if (nt == 2) amx_block<2, 1>(w0, K, qb, streaming, c);
        else if (mt == 2) amx_block<1, 2>(w0, K, qb, streaming, c);
        else amx_block<1, 1>(w0, K, qb, streaming, c);
      } else {
        if (nt == 2 && mt == 2) vnni_block<2, 2>(w0, K, qb, wsum, c);
        else if (nt == 2) vnni_block<2, 1>(w0, K, qb, wsum, c);
        else if (mt == 2) vnni_block<1, 2>(w0, K, qb, wsum, c);
        else vnni_block<1, 1>(w0, K, qb, wsum, c);
      }
      for (int tn = 0; tn < nt; ++tn) {
        const int64_t col = n + tn * kAmxTile;
        for (int64_t i = 0; i < xm; ++i)
          store_tile_row(x, m + i, c + tn * mt * 256, i * digits, scale + col,
                         bias ? bias + col : nullptr, y + (m + i) * ldy + col);
      }
    }
  }
  if (amx) amx_end();
}

template <typename T>
void quantize_rows(Isa isa, const T* x, int64_t K, int8_t* q, int64_t ldq, float* rs,
                   int32_t* qsum, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    if (isa == Isa::Avx512Vnni) quantize_row_avx512(x + m * K, K, q + m * ldq, ldq, rs + m, qsum + m);
    else if (isa == Isa::Avx2) quantize_row_avx2(x + m * K, K, q + m * ldq, ldq, rs + m, qsum + m);
    else quantize_row_scalar(x + m * K, K, q + m * ldq, ldq, rs + m, qsum + m);
  }
}

template void quantize_rows<float>(Isa, const float*, int64_t, int8_t*, int64_t, float*, int32_t*,
                                   int64_t, int64_t);
template void quantize_rows<c10::BFloat16>(Isa, const c10::BFloat16*, int64_t, int8_t*, int64_t,
                                           float*, int32_t*, int64_t, int64_t);
template void quantize_rows<c10::Half>(Isa, const c10::Half*, int64_t, int8_t*, int64_t, float*,
                                       int32_t*, int64_t, int64_t);

void int8_gemm_dynamic(Isa isa, const QuantX& x, int64_t K, const int8_t* w,
                       const float* scale, const float* bias, float* y, int64_t ldy,
                       int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  switch (isa) {
    case Isa::Avx512Vnni:
      gemm<Isa::Avx512Vnni>(x, K, w, scale, bias, y, ldy, m0, m1, n0, n1);
      break;
    case Isa::Avx2:
      gemm<Isa::Avx2>(x, K, w, scale, bias, y, ldy, m0, m1, n0, n1);
      break;
    default:
      gemm<Isa::Scalar>(x, K, w, scale, bias, y, ldy, m0, m1, n0, n1);
      break;
  }
}

}  // namespace myq
