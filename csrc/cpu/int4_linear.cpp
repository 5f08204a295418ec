// W4A16 kernels: packed int4 weights [N, K/2] with per-group scales / zero points.
//
// Small M: activations are reordered once per call (int4_prepare_x) so that the low and
// high nibbles of 16 packed bytes meet 16 contiguous x values each; a row is streamed
// once per block of MR activation rows, NR rows at a time. AVX-512 looks the nibbles up
// in a per-group table of dequantized values (vpermps). Scalar, AVX2 with one row of x, and
// bfloat16 x on AVX512-BF16 (block_bf16: q as bfloat16 for vdpbf16ps):
// within a group the products sum(x * q) accumulate unscaled, then one FMA per group applies
// the group scale; AVX2 with more rows scales the widened weights instead (block_avx2). The
// zero point enters once at the end as sum_g scale*zero*sum(x in group). AVX2 from
// kPanelMinM rows dequantizes each column block once into a float32 panel instead
// (gemv_panel_avx2). One row of x on AVX-512 VNNI comes as int8 digits instead
// (block_digits), which meet the nibbles as bytes in vpdpbusd.
// Large M: int4_dequant fills a float32 / bfloat16 tile for at::mm in the binding.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

constexpr int kNR = 4;
constexpr float kSymmetricZero = 8.f;

inline float zero_at(const float* zeros, int64_t i) {
  return zeros ? zeros[i] : kSymmetricZero;
}

// Subtracts sum_g scale*zero*xsum[g] and adds the bias: the epilogue of every path.
inline float finish(float dot, const float* xsum_row, const float* scales_row,
                    const float* zeros_row, int64_t G, const float* bias, int64_t n) {
  float corr = 0.f;
  for (int64_t g = 0; g < G; ++g)
    corr += scales_row[g] * (zeros_row ? zeros_row[g] : kSymmetricZero) * xsum_row[g];
  return dot - corr + (bias ? bias[n] : 0.f);
}

// finish() in AVX-512, 16 groups at a time: a GEMV block's own work per output is ~17 zmm
// ops per 128 weights, and the scalar sum (a chain of G dependent FMAs) weighed on it.
MYQ_TARGET_AVX512 float finish_avx512(float dot, const float* xsum_row, const float* scales_row,
                                      const float* zeros_row, int64_t G, const float* bias,
                                      int64_t n) {
  __m512 corr = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    const __mmask16 mask = G - g >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (G - g)) - 1);
    const __m512 zero = zeros_row ? _mm512_maskz_loadu_ps(mask, zeros_row + g)
                                  : _mm512_set1_ps(kSymmetricZero);
    corr = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, scales_row + g), zero),
                           _mm512_maskz_loadu_ps(mask, xsum_row + g), corr);
  }
  return dot - _mm512_reduce_add_ps(corr) + (bias ? bias[n] : 0.f);
}

// ---------------------------------------------------------------- scalar
void gemv_scalar(const float* xp, const float* xsum, int64_t M, int64_t K,
                 const uint8_t* packed, const float* scales, const float* zeros, int64_t gs,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t G = K / gs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = xp + m * K;
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        float part = 0.f;
        for (int64_t c = g * gs; c < (g + 1) * gs; c += kInt4Chunk)
          for (int b = 0; b < 16; ++b) {
            const uint8_t byte = pr[c / 2 + b];
            part += xr[c + b] * static_cast<float>(byte & 15) +
                    xr[c + 16 + b] * static_cast<float>(byte >> 4);
          }
        acc += part * scales[n * G + g];
      }
      y[m * ldy + n] =
          finish(acc, xsum + m * G, scales + n * G, zeros ? zeros + n * G : nullptr, G, bias, n);
    }
  }
}

// ---------------------------------------------------------------- AVX-512
// Per row and group, a 16-entry table holds the dequantized weights (v - zero) * scale
// for v = 0..15 (the reference's float32 arithmetic, so the weights are bit-identical);
// vpermps looks the nibbles up in it, which replaces the int -> float conversion and
// folds scale and zero point in: no per-group partial sums, no zero correction.
template <int MR>
MYQ_TARGET_AVX512 void block_avx512(const float* xp, int64_t K, int64_t gs,
                                    const uint8_t* const* pr, const float* const* sr,
                                    const float* const* zr, float* out) {
  const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t G = K / gs;
  const int64_t ahead = prefetch_ahead(kNR * K / 2);
  for (int64_t g = 0; g < G; ++g) {
    __m512 tab[kNR];
    for (int j = 0; j < kNR; ++j) {
      const __m512 z = _mm512_set1_ps(zr[j] ? zr[j][g] : kSymmetricZero);
      tab[j] = _mm512_mul_ps(_mm512_sub_ps(iota, z), _mm512_set1_ps(sr[j][g]));
    }
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kInt4Chunk) {
      if ((k & 127) == 0)  // once per line (128 weights) of each row
        for (int j = 0; j < kNR; ++j)
          prefetch_to_l2(pr[j] + k / 2 + ahead);
      __m512 lo[kNR], hi[kNR];
      for (int j = 0; j < kNR; ++j) {
        // 16 lanes, one packed byte each: vpermps reads the low 4 bits of the index.
        const __m512i v = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(pr[j] + k / 2)));
        lo[j] = _mm512_permutexvar_ps(v, tab[j]);
        hi[j] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512 xlo = _mm512_loadu_ps(xp + i * K + k);
        const __m512 xhi = _mm512_loadu_ps(xp + i * K + k + 16);
        for (int j = 0; j < kNR; ++j) {
          acc[i][j] = _mm512_fmadd_ps(xlo, lo[j], acc[i][j]);
          acc[i][j] = _mm512_fmadd_ps(xhi, hi[j], acc[i][j]);
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) out[i * kNR + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// ---------------------------------------------------------------- AVX512-BF16
// bfloat16 x, reordered as xp (int4_prepare_x). vpermw turns the nibbles of 16 bytes into the
// 32 weights q as bfloat16, low nibbles then high ones (the order of xp), from one table of
// bf16(0..15) (twice: vpermw reads five index bits); one vdpbf16ps then adds 32 exact
// products x * q, where the float32 table needs two vpermps, a shift and two FMAs, all zmm
// shuffles and FMAs sharing Zen 4's two 256-bit halves. Per group the sums are scaled once
// (float32), and finish() takes the zero points off, as the AVX2 one-row path does.
// MR <= 4: the MR x kNR partial sums stay in registers, x comes as memory operands of the
// dot products, and the totals, updated once per group, may live in memory.
template <int MR>
MYQ_TARGET_AVX512_BF16 void block_bf16(const uint16_t* x, int64_t K, int64_t gs,
                                       const uint8_t* const* pr, const float* const* sr,
                                       float* out) {
  const __m512i q_bf16 = _mm512_set_epi16(
      0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100,
      0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0x0000,
      0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100,
      0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0x0000);
  __m512 acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t G = K / gs;
  const int64_t ahead = prefetch_ahead(kNR * K / 2);
  for (int64_t g = 0; g < G; ++g) {
    __m512 part[MR][kNR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNR; ++j) part[i][j] = _mm512_setzero_ps();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kInt4Chunk) {
      if ((k & 127) == 0)
        for (int j = 0; j < kNR; ++j) prefetch_to_l2(pr[j] + k / 2 + ahead);
      __m512i xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_si512(x + i * K + k);
      for (int j = 0; j < kNR; ++j) {
        const __m256i bytes = _mm256_cvtepu8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(pr[j] + k / 2)));
        const __m512i nibbles =
            _mm512_inserti64x4(_mm512_castsi256_si512(bytes), _mm256_srli_epi16(bytes, 4), 1);
        const __m512i q = _mm512_permutexvar_epi16(nibbles, q_bf16);
        for (int i = 0; i < MR; ++i) part[i][j] = dpbf16(part[i][j], q, xv[i]);
      }
    }
    for (int j = 0; j < kNR; ++j) {
      const __m512 scale = _mm512_set1_ps(sr[j][g]);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(part[i][j], scale, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) out[i * kNR + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// ---------------------------------------------------------------- AVX-512 VNNI, x as digits
// x as 3 or 4 int8 digits (QuantX, split_digits with int4_chunk = kInt4DigitStep), so the
// nibbles never become floats: 64 packed bytes are masked into their low and high nibbles as
// bytes (3 ops), which meet the digits of x's even and odd elements in vpdpbusd (u8 x s8),
// 2 per digit. Per 128 weights and weight row that is 13 zmm ops for 3 digits and 17 for 4,
// where block_avx512 takes 24 (the table lookups and FMAs of 4 chunks) and block_bf16 20.
// Lane l of a step holds weights k + 8l .. k + 8l + 7, all in one group (group_size % 32 == 0):
// its partial sums of the digits are combined in int32, the top digit first, each shifted a
// digit up before the next adds in (|sum of a digit| <= 8 * 15 * 128 per lane: three digits
// fit in 31 bits, four go as two pairs), converted once per step and scaled by the lane's
// group scale.

// Where the group scales of a step come from, when a step may span groups: the first group
// it touches, how many (a load mask), and each lane's group relative to the first.
struct StepGroups {
  int64_t first;
  __mmask16 count;
  int32_t lane[16];
};

std::vector<StepGroups> step_groups(int64_t K, int64_t gs) {
  std::vector<StepGroups> steps;
  for (int64_t k = 0; k < K; k += kInt4DigitStep) {
    StepGroups s{k / gs, 0, {}};
    const int64_t lanes = std::min(kInt4DigitStep, K - k) / 8;
    for (int64_t l = 0; l < 16; ++l) s.lane[l] = l < lanes ? (k + 8 * l) / gs - s.first : 0;
    s.count = __mmask16((1u << (s.lane[lanes - 1] + 1)) - 1);
    steps.push_back(s);
  }
  return steps;
}

// kStepInGroup: group_size % kInt4DigitStep == 0, so every step is whole and lies in one group;
// otherwise `steps` (step_groups) gives each step's scales and the last step may be short.
template <int D, bool kStepInGroup>
MYQ_TARGET_AVX512 void block_digits(const int8_t* q, int64_t ldq, int64_t K, int64_t gs,
                                    const StepGroups* steps, const uint8_t* const* pr,
                                    const float* const* sr, float* out) {
  constexpr int kChains = D == 4 ? 2 : 1;  // chain c holds digits [2c, ...), the top one first
  const __m512i low4 = _mm512_set1_epi8(15);
  __m512 acc[kChains][kNR];
  for (int c = 0; c < kChains; ++c)
    for (int j = 0; j < kNR; ++j) acc[c][j] = _mm512_setzero_ps();
  const int64_t ahead = prefetch_ahead(kNR * K / 2);
  // Scales change every span of weights: a group, or (spanning groups) a step.
  const int64_t span = kStepInGroup ? gs : kInt4DigitStep;
  for (int64_t k0 = 0; k0 < K; k0 += span) {
    __m512 scale[kNR];
    for (int j = 0; j < kNR; ++j) {
      if constexpr (kStepInGroup) {
        scale[j] = _mm512_set1_ps(sr[j][k0 / gs]);
      } else {
        const StepGroups& s = steps[k0 / kInt4DigitStep];
        scale[j] = _mm512_permutexvar_ps(_mm512_loadu_si512(s.lane),
                                         _mm512_maskz_loadu_ps(s.count, sr[j] + s.first));
      }
    }
    // Steps spanning groups: one step per span.
    const int64_t k1 = kStepInGroup ? k0 + span : k0 + 1;
    for (int64_t k = k0; k < k1; k += kInt4DigitStep) {
      const int64_t half = kStepInGroup ? 64 : std::min(kInt4DigitStep, K - k) / 2;  // bytes
      const __mmask64 bytes = _bzhi_u64(~0ull, static_cast<unsigned>(half));  // no branch
      auto load = [&](const void* p) MYQ_TARGET_AVX512 {
        return kStepInGroup ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(bytes, p);
      };
      __m512i x_even[D], x_odd[D];
      for (int d = 0; d < D; ++d) {
        x_even[d] = load(q + d * ldq + k);
        x_odd[d] = load(q + d * ldq + k + half);
      }
      for (int j = 0; j < kNR; ++j) {
        prefetch_to_l2(pr[j] + k / 2 + ahead);
        const __m512i v = load(pr[j] + k / 2);
        const __m512i lo = _mm512_and_si512(v, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        for (int c = 0; c < kChains; ++c) {
          __m512i t = _mm512_setzero_si512();
          for (int d = std::min(D, 2 * c + (D == 4 ? 2 : 3)) - 1; d >= 2 * c; --d) {
            t = dpbusd(dpbusd(t, lo, x_even[d]), hi, x_odd[d]);
            if (d > 2 * c) t = _mm512_slli_epi32(t, 8);
          }
          acc[c][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), scale[j], acc[c][j]);
        }
      }
    }
  }
  for (int j = 0; j < kNR; ++j) {
    __m512 v = acc[0][j];
    if constexpr (kChains == 2) v = _mm512_fmadd_ps(acc[1][j], _mm512_set1_ps(65536.f), v);
    out[j] = _mm512_reduce_add_ps(v);
  }
}

// ---------------------------------------------------------------- AVX2
// Weights are prefetched kPrefetchBlocks row blocks ahead in address order
// (prefetch_block_lines), for every M. 4096^2 M=1 cold, alternating processes: no prefetch
// 1151-1480 us -> one line in each row of the block 960-1022; in a later sitting, one line per
// row 834-883 -> address order 760-767.
// Widening the nibbles through the float 2^23 (vpshufb or and / or, then a subtraction) instead
// of vcvtdq2ps was slower: 4096^2 M=1 834-926 -> 1059-1093 us, and in L2 on one core
// 15-20 -> 19-28 us for 64 rows.
constexpr int64_t kPrefetchBlocks = 4;
// The group scale is applied in one of two ways, by MR. One row of x keeps unscaled partial
// sums per group (two FMA chains per row pair) and scales them once per group: the fewest
// instructions per weight, which is what bounds one row of x (the scaled form below measured
// 806-894 -> 954-1009 us at 4096^2). From two rows of x on, the widened weights are scaled in
// registers (q * s, one multiply per 8 weights shared by the MR rows) and accumulate directly:
// one register per row pair instead of three, so NR can grow (rows_per_block; 4096^2 M=8
// 4575-7243 -> 3675-3756 us against partial sums with NR = 1). The zero point enters in
// finish() either way.
template <int MR, int NR>
MYQ_TARGET_AVX2 void block_avx2(const float* xp, int64_t K, int64_t gs,
                                const uint8_t* const* pr, const float* const* sr, float* out) {
  constexpr bool kScaleWeights = MR > 1;
  const __m256i low4 = _mm256_set1_epi32(15);
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t G = K / gs;
  const int64_t ahead = kPrefetchBlocks * NR * K / 2;
  for (int64_t g = 0; g < G; ++g) {
    __m256 s[NR];
    __m256 part[MR][NR], part_hi[MR][NR];
    for (int j = 0; j < NR; ++j) {
      if constexpr (kScaleWeights) s[j] = _mm256_set1_ps(sr[j][g]);
      else
        for (int i = 0; i < MR; ++i) part[i][j] = part_hi[i][j] = _mm256_setzero_ps();
    }
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kInt4Chunk) {
      if ((k & 127) == 0) prefetch_block_lines<NR>(pr[0], ahead, k / 128);  // 128 weights a line
      for (int h = 0; h < 2; ++h) {  // bytes 0..7 then 8..15 of the chunk
        for (int j = 0; j < NR; ++j) {
          __m256i v = _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(pr[j] + k / 2 + 8 * h)));
          __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low4));
          __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
          if constexpr (kScaleWeights) {
            lo = _mm256_mul_ps(lo, s[j]);
            hi = _mm256_mul_ps(hi, s[j]);
          }
          for (int i = 0; i < MR; ++i) {
            __m256& sum_lo = kScaleWeights ? acc[i][j] : part[i][j];
            __m256& sum_hi = kScaleWeights ? acc[i][j] : part_hi[i][j];
            sum_lo = _mm256_fmadd_ps(_mm256_loadu_ps(xp + i * K + k + 8 * h), lo, sum_lo);
            sum_hi = _mm256_fmadd_ps(_mm256_loadu_ps(xp + i * K + k + 16 + 8 * h), hi, sum_hi);
          }
        }
      }
    }
    if constexpr (!kScaleWeights)
      for (int j = 0; j < NR; ++j) {
        const __m256 scale = _mm256_set1_ps(sr[j][g]);
        for (int i = 0; i < MR; ++i)
          acc[i][j] = _mm256_fmadd_ps(_mm256_add_ps(part[i][j], part_hi[i][j]), scale, acc[i][j]);
      }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * NR + j] = hsum_avx2(acc[i][j]);
}

// The row, scale and zero-point pointers of a block of `count` weight rows from nb, of which
// the first `nr` exist: the rest repeat the last one, so a short block reads valid memory.
struct BlockRows {
  const uint8_t* packed[kNR];
  const float* scales[kNR];
  const float* zeros[kNR];
  BlockRows(int64_t nb, int nr, int count, int64_t K, int64_t G, const uint8_t* p,
            const float* s, const float* z) {
    for (int j = 0; j < count; ++j) {
      const int64_t n = nb + std::min(j, nr - 1);
      packed[j] = p + n * (K / 2);
      scales[j] = s + n * G;
      zeros[j] = z ? z + n * G : nullptr;
    }
  }
};

// The GEMV kernels: float32 x (as xp) in AVX-512 tables or AVX2 partial sums, and bfloat16 x
// (as xp) in AVX512-BF16 dot products.
enum class Gemv { kAvx512, kAvx2, kAvx512Bf16 };

// Weight rows per block for MR rows of x: AVX-512 always kNR.
template <Gemv P>
constexpr int rows_per_block(int mr) {
  return P != Gemv::kAvx2 ? kNR : mr == 1 ? 4 : mr == 2 ? 4 : mr == 3 ? 3 : 2;
}

template <int MR, Gemv P, typename X>
void run_block(const X* xp, int64_t K, int64_t gs, const uint8_t* const* pr,
               const float* const* sr, const float* const* zr, float* out) {
  if constexpr (P == Gemv::kAvx512) block_avx512<MR>(xp, K, gs, pr, sr, zr, out);
  else if constexpr (P == Gemv::kAvx2)
    block_avx2<MR, rows_per_block<P>(MR)>(xp, K, gs, pr, sr, out);
  else block_bf16<MR>(reinterpret_cast<const uint16_t*>(xp), K, gs, pr, sr, out);
}

// Columns [n0, n1) in blocks of kColumns weight rows (L2-resident while every block of MR
// rows of x passes over them, so the weights stream from memory once for any M); a multiple
// of every rows_per_block.
constexpr int64_t kColumns = 24;

template <Gemv P, typename X>
void gemv_vector(const X* xp, const float* xsum, int64_t M, int64_t K,
                 const uint8_t* packed, const float* scales, const float* zeros, int64_t gs,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  constexpr int kMaxMR = 4;
  const int64_t G = K / gs;
  float out[kMaxMR * kNR];
  for (int64_t nc = n0; nc < n1; nc += kColumns) {
    const int64_t nc1 = std::min(n1, nc + kColumns);
    int mr = 0;
    for (int64_t m = 0; m < M; m += mr) {
      mr = gemv_rows_per_pass(M - m);
      const int nr_block = rows_per_block<P>(mr);
      const X* xm = xp + m * K;
      for (int64_t nb = nc; nb < nc1; nb += nr_block) {
        const int nr = static_cast<int>(std::min<int64_t>(nr_block, nc1 - nb));
        const BlockRows rows(nb, nr, nr_block, K, G, packed, scales, zeros);
        const uint8_t* const* pr = rows.packed;
        const float* const* sr = rows.scales;
        const float* const* zr = rows.zeros;
        switch (mr) {
          case 1: run_block<1, P>(xm, K, gs, pr, sr, zr, out); break;
          case 2: run_block<2, P>(xm, K, gs, pr, sr, zr, out); break;
          case 3: run_block<3, P>(xm, K, gs, pr, sr, zr, out); break;
          default: run_block<4, P>(xm, K, gs, pr, sr, zr, out); break;
        }
        for (int i = 0; i < mr; ++i)
          for (int j = 0; j < nr; ++j) {
            const int64_t n = nb + j;
            const float dot = out[i * nr_block + j];
            // AVX-512's tables fold the zero point in; the partial sums subtract it here.
            y[(m + i) * ldy + n] =
                P == Gemv::kAvx512 ? dot + (bias ? bias[n] : 0.f)
                : P == Gemv::kAvx512Bf16
                    ? finish_avx512(dot, xsum + (m + i) * G, scales + n * G,
                                    zeros ? zeros + n * G : nullptr, G, bias, n)
                    : finish(dot, xsum + (m + i) * G, scales + n * G,
                             zeros ? zeros + n * G : nullptr, G, bias, n);
          }
      }
    }
  }
}

// block_digits over columns [n0, n1), each row of x in turn over a block of kColumns weight
// rows (in L2 for the rows after the first).
template <int D>
void gemv_digits(const QuantX& x, const float* xsum, int64_t M, int64_t K,
                 const uint8_t* packed, const float* scales, const float* zeros, int64_t gs,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t G = K / gs;
  const bool step_in_group = gs % kInt4DigitStep == 0;
  const std::vector<StepGroups> steps = step_in_group ? std::vector<StepGroups>()
                                                      : step_groups(K, gs);
  float out[kNR];
  for (int64_t nc = n0; nc < n1; nc += kColumns) {
    const int64_t nc1 = std::min(n1, nc + kColumns);
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* q = x.q + q_row(D, m) * x.ldq;
      const float unit = static_cast<float>(x.unit[m]);
      for (int64_t nb = nc; nb < nc1; nb += kNR) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, nc1 - nb));
        const BlockRows rows(nb, nr, kNR, K, G, packed, scales, zeros);
        if (step_in_group)
          block_digits<D, true>(q, x.ldq, K, gs, nullptr, rows.packed, rows.scales, out);
        else
          block_digits<D, false>(q, x.ldq, K, gs, steps.data(), rows.packed, rows.scales, out);
        for (int j = 0; j < nr; ++j) {
          const int64_t n = nb + j;
          y[m * ldy + n] = finish_avx512(out[j] * unit, xsum + m * G, scales + n * G,
                                         zeros ? zeros + n * G : nullptr, G, bias, n);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- dequant
// One packed byte: weights k (low nibble) and k + 1 (high), as the reference computes them.
template <typename T>
inline void dequant_byte(uint8_t byte, float zero, float scale, T* out) {
  out[0] = static_cast<T>((static_cast<float>(byte & 15) - zero) * scale);
  out[1] = static_cast<T>((static_cast<float>(byte >> 4) - zero) * scale);
}

template <typename T>
void dequant_scalar(const uint8_t* packed, const float* scales, const float* zeros,
                    int64_t gs, int64_t K, int64_t n0, int64_t n1, T* tile) {
  const int64_t G = K / gs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    T* out = tile + (n - n0) * K;
    for (int64_t k = 0; k < K; k += 2) {
      const int64_t g = k / gs;  // gs is even: k and k + 1 share the group
      dequant_byte(pr[k / 2], zero_at(zeros, n * G + g), scales[n * G + g], out + k);
    }
  }
}

// float32 tiles on AVX2, 32 weights (16 bytes) at a time: the nibbles are split and
// interleaved back into natural order as bytes, then widened; (q - zero) * scale as in the
// reference. 256 x 4096 at g128, one core: 1.41-1.50 ns per weight in dequant_scalar -> 0.12.
MYQ_TARGET_AVX2 void dequant_avx2(const uint8_t* packed, const float* scales, const float* zeros,
                                  int64_t gs, int64_t K, int64_t n0, int64_t n1, float* tile) {
  const int64_t G = K / gs;
  const __m128i low4 = _mm_set1_epi8(15);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    float* out = tile + (n - n0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const float zf = zero_at(zeros, n * G + g), sf = scales[n * G + g];
      const __m256 z = _mm256_set1_ps(zf), s = _mm256_set1_ps(sf);
      const int64_t b_end = (g + 1) * gs / 2;
      int64_t b = g * gs / 2;
      for (; b + 16 <= b_end; b += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pr + b));
        const __m128i lo = _mm_and_si128(v, low4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
        const __m128i q[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};
        for (int h = 0; h < 4; ++h) {
          const __m128i bytes = h % 2 ? _mm_srli_si128(q[h / 2], 8) : q[h / 2];
          const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
          _mm256_storeu_ps(out + 2 * b + 8 * h, _mm256_mul_ps(_mm256_sub_ps(f, z), s));
        }
      }
      for (; b < b_end; ++b) dequant_byte(pr[b], zf, sf, out + 2 * b);
    }
  }
}

// AVX2 from kPanelMinM rows of x: the passes over a column block would widen every nibble
// once per pass. Instead each block of kColumns rows is dequantized once (dequant_avx2: the
// reference's weights, natural order) into a float32 panel (24 x K floats, in L2 up to
// K ~ 10000), and every pass multiplies float weights with the natural-order x. Cold,
// 2 threads, ms, widening per pass -> panel, alternating processes: 4096^2 M=12 5.7-8.1 ->
// 5.2-7.4, M=64 24-30 -> 20-26; 1536 x 576 M=16 0.48-0.53 -> 0.36-0.50, M=64 1.8-2.7 ->
// 0.9-1.5. At M = 8 it was no faster (one core, 4096^2: 6.6 ms against 6.6-8.3). The blocks
// are dot_block_avx2 (simd.h) on float weights, without prefetch: the panel is in L2.

// Panel rows per block for MR rows of x: MR x NR accumulators plus NR weights in 16 registers.
constexpr int panel_rows_per_block(int mr) { return mr >= 3 ? 3 : 4; }

void gemv_panel_avx2(const float* x, int64_t M, int64_t K, const uint8_t* packed,
                     const float* scales, const float* zeros, int64_t gs, const float* bias,
                     float* y, int64_t ldy, int64_t n0, int64_t n1) {
  thread_local std::vector<float> panel;  // grows once per thread
  panel.resize(kColumns * K);
  float out[4 * 4];
  for (int64_t nc = n0; nc < n1; nc += kColumns) {
    const int64_t nc1 = std::min(n1, nc + kColumns);
    dequant_avx2(packed, scales, zeros, gs, K, nc, nc1, panel.data());
    int mr = 0;
    for (int64_t m = 0; m < M; m += mr) {
      mr = gemv_rows_per_pass(M - m);
      const int nr_block = panel_rows_per_block(mr);
      const float* xm = x + m * K;
      for (int64_t nb = nc; nb < nc1; nb += nr_block) {
        const int nr = static_cast<int>(std::min<int64_t>(nr_block, nc1 - nb));
        const float* wr[4];
        for (int j = 0; j < nr_block; ++j)  // pad: repeat the last row
          wr[j] = panel.data() + (nb - nc + std::min(j, nr - 1)) * K;
        switch (mr) {
          case 1: dot_block_avx2<1, panel_rows_per_block(1), 0>(xm, K, wr, out); break;
          case 2: dot_block_avx2<2, panel_rows_per_block(2), 0>(xm, K, wr, out); break;
          case 3: dot_block_avx2<3, panel_rows_per_block(3), 0>(xm, K, wr, out); break;
          default: dot_block_avx2<4, panel_rows_per_block(4), 0>(xm, K, wr, out); break;
        }
        for (int i = 0; i < mr; ++i)
          for (int j = 0; j < nr; ++j)
            y[(m + i) * ldy + nb + j] = out[i * nr_block + j] + (bias ? bias[nb + j] : 0.f);
      }
    }
  }
}

// Dequantized weights of one group, natural order, via the same per-group table as the
// gemv (values bit-identical to the reference; bf16 rounds them to nearest even).
template <typename T>
MYQ_TARGET_AVX512 void dequant_avx512(const uint8_t* packed, const float* scales,
                                      const float* zeros, int64_t gs, int64_t K, int64_t n0,
                                      int64_t n1, T* tile) {
  const int64_t G = K / gs;
  const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // float: lo = q[0, 2, ..., 30], hi = q[1, 3, ..., 31] -> natural order
  const __m512i idx_a = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i idx_b =
      _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  // bf16: lo = q[0, 2, ..., 62], hi = q[1, 3, ..., 63] (words) -> natural order
  const __m512i widx_a = _mm512_set_epi16(
      47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i widx_b = _mm512_set_epi16(
      63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24,
      55, 23, 54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    T* out = tile + (n - n0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const __m512 z = _mm512_set1_ps(zero_at(zeros, n * G + g));
      const __m512 tab = _mm512_mul_ps(_mm512_sub_ps(iota, z), _mm512_set1_ps(scales[n * G + g]));
      const int64_t b_end = (g + 1) * gs / 2;
      if constexpr (std::is_same_v<T, float>) {
        for (int64_t b = g * gs / 2; b < b_end; b += 16) {
          const int64_t nb = std::min<int64_t>(16, b_end - b);
          const __mmask16 mask = nb == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nb) - 1);
          const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, pr + b));
          const __m512 lo = _mm512_permutexvar_ps(v, tab);
          const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
          const int64_t ne = 2 * nb;
          const __mmask16 m0 = ne >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << ne) - 1);
          const __mmask16 m1 = ne >= 32 ? __mmask16(0xFFFF)
                               : ne > 16 ? __mmask16((1u << (ne - 16)) - 1) : __mmask16(0);
          _mm512_mask_storeu_ps(out + 2 * b, m0, _mm512_permutex2var_ps(lo, idx_a, hi));
          _mm512_mask_storeu_ps(out + 2 * b + 16, m1, _mm512_permutex2var_ps(lo, idx_b, hi));
        }
      } else {
        const __m256i t16 = bf16_round_bits(tab);
        // vpermw reads 5 index bits: the table repeats, so bit 4 may hold anything.
        const __m512i wtab = _mm512_inserti64x4(_mm512_castsi256_si512(t16), t16, 1);
        const __m512i low4 = _mm512_set1_epi16(15);
        for (int64_t b = g * gs / 2; b < b_end; b += 32) {
          const int64_t nb = std::min<int64_t>(32, b_end - b);
          const __mmask32 mask = nb == 32 ? ~__mmask32(0) : __mmask32((1u << nb) - 1);
          const __m512i v = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, pr + b));
          const __m512i lo = _mm512_permutexvar_epi16(v, wtab);
          const __m512i hi = _mm512_permutexvar_epi16(_mm512_and_si512(_mm512_srli_epi16(v, 4), low4), wtab);
          const int64_t ne = 2 * nb;
          const __mmask32 m0 = ne >= 32 ? ~__mmask32(0) : __mmask32((1u << ne) - 1);
          const __mmask32 m1 = ne >= 64 ? ~__mmask32(0)
                               : ne > 32 ? __mmask32((1u << (ne - 32)) - 1) : __mmask32(0);
          _mm512_mask_storeu_epi16(out + 2 * b, m0, _mm512_permutex2var_epi16(lo, widx_a, hi));
          _mm512_mask_storeu_epi16(out + 2 * b + 32, m1, _mm512_permutex2var_epi16(lo, widx_b, hi));
        }
      }
    }
  }
}

template <typename T>
void group_sums(const T* x, int64_t M, int64_t K, int64_t group_size, float* xsum) {
  const int64_t G = K / group_size;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k)
        s += static_cast<float>(x[m * K + k]);
      xsum[m * G + g] = s;
    }
}

// int4_prepare_x for float32 and bfloat16 x.
template <typename T>
void prepare_x(const T* x, int64_t M, int64_t K, int64_t group_size, T* xp, float* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * K;
    T* pr = xp + m * K;
    for (int64_t c = 0; c + kInt4Chunk <= K; c += kInt4Chunk)
      for (int b = 0; b < 16; ++b) {
        pr[c + b] = xr[c + 2 * b];
        pr[c + 16 + b] = xr[c + 2 * b + 1];
      }
  }
  group_sums(x, M, K, group_size, xsum);
}

}  // namespace

bool int4_gemv_supported(int64_t group_size) { return group_size % kInt4Chunk == 0; }

void int4_prepare_x(const float* x, int64_t M, int64_t K, int64_t group_size, float* xp,
                    float* xsum) {
  prepare_x(x, M, K, group_size, xp, xsum);
}

void int4_prepare_x(const c10::BFloat16* x, int64_t M, int64_t K, int64_t group_size,
                    c10::BFloat16* xp, float* xsum) {
  prepare_x(x, M, K, group_size, xp, xsum);
}

void int4_gemv_digits(const QuantX& x, const float* xsum, int64_t M, int64_t K,
                      const uint8_t* packed, const float* scales, const float* zeros,
                      int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
                      int64_t n1) {
  if (x.digits == 4)
    gemv_digits<4>(x, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
  else
    gemv_digits<3>(x, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
}

template <typename T>
void int4_group_sums(const T* x, int64_t M, int64_t K, int64_t group_size, float* xsum) {
  group_sums(x, M, K, group_size, xsum);
}
template void int4_group_sums<float>(const float*, int64_t, int64_t, int64_t, float*);
template void int4_group_sums<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t,
                                             float*);
template void int4_group_sums<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t, float*);

void int4_gemv_bf16(const c10::BFloat16* xp, const float* xsum, int64_t M, int64_t K,
                    const uint8_t* packed, const float* scales, const float* zeros,
                    int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
                    int64_t n1) {
  gemv_vector<Gemv::kAvx512Bf16>(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy,
                                 n0, n1);
}

void int4_gemv(Isa isa, const float* x, const float* xp, const float* xsum, int64_t M,
               int64_t K, const uint8_t* packed, const float* scales, const float* zeros,
               int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  switch (isa) {
    case Isa::Avx512Vnni:
      gemv_vector<Gemv::kAvx512>(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy,
                                 n0, n1);
      break;
    case Isa::Avx2:
      if (!int4_gemv_reads_xp(isa, M))
        gemv_panel_avx2(x, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
      else
        gemv_vector<Gemv::kAvx2>(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y,
                                 ldy, n0, n1);
      break;
    default:
      gemv_scalar(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
      break;
  }
}

template <typename T>
void int4_dequant(Isa isa, const uint8_t* packed, const float* scales, const float* zeros,
                  int64_t group_size, int64_t K, int64_t n0, int64_t n1, T* tile) {
  if (isa == Isa::Avx512Vnni)
    return dequant_avx512<T>(packed, scales, zeros, group_size, K, n0, n1, tile);
  // bfloat16 tiles go with bfloat16 hardware (AVX-512): AVX2 fills float32 ones.
  if constexpr (std::is_same_v<T, float>)
    if (isa == Isa::Avx2) return dequant_avx2(packed, scales, zeros, group_size, K, n0, n1, tile);
  dequant_scalar<T>(packed, scales, zeros, group_size, K, n0, n1, tile);
}

template void int4_dequant<float>(Isa, const uint8_t*, const float*, const float*, int64_t,
                                  int64_t, int64_t, int64_t, float*);
template void int4_dequant<c10::BFloat16>(Isa, const uint8_t*, const float*, const float*,
                                          int64_t, int64_t, int64_t, int64_t, c10::BFloat16*);

}  // namespace myq
