// W8A16 kernels: int8 weights [N, K] times float32 activations, fp32 accumulation.
//
// Small M (decode): each weight row is streamed once per block of MR activation rows;
// int8 is widened to fp32 in registers and FMA'd against x, NR weight rows at a time,
// so each x vector load feeds NR FMAs and each weight vector feeds MR FMAs. bfloat16 x on
// AVX512-BF16 (block_bf16) takes the weights as bfloat16 into vdpbf16ps instead.
// Large M: int8_dequant fills a tile that the binding multiplies with at::mm.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

constexpr int kNR = 4;  // weight rows per AVX-512 register block

// ---------------------------------------------------------------- scalar
void gemv_scalar(const float* x, int64_t M, int64_t K, const int8_t* w, const float* scale,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wr = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += xr[k] * static_cast<float>(wr[k]);
      y[m * ldy + n] = acc * scale[n] + (bias ? bias[n] : 0.f);
    }
  }
}

// ---------------------------------------------------------------- AVX-512
MYQ_TARGET_AVX512 inline __m512 load_i8_ps_avx512(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
MYQ_TARGET_AVX512 inline __m512 maskload_i8_ps_avx512(__mmask16 mask, const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

// out[i*kNR + j] = dot(x row i, weight row j), i < MR.
template <int MR>
MYQ_TARGET_AVX512 void block_avx512(const float* x, int64_t K, const int8_t* const* wr,
                                    float* out) {
  __m512 acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t ahead = prefetch_ahead(kNR * K);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(x + i * K + k);
    if ((k & 63) == 0)  // once per cache line of each row
      for (int j = 0; j < kNR; ++j)
        prefetch_to_l2(wr[j] + k + ahead);
    for (int j = 0; j < kNR; ++j) {
      __m512 wv = load_i8_ps_avx512(wr[j] + k);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_maskz_loadu_ps(mask, x + i * K + k);
    for (int j = 0; j < kNR; ++j) {
      __m512 wv = maskload_i8_ps_avx512(mask, wr[j] + k);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) out[i * kNR + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// One row of x (decode): the weights are read one row after another, in address order, each
// against the whole of x, rather than kNR rows side by side. Zen 4, 2 threads, weights cycled
// through 256 MB, float32 x, block_avx512 -> row_dot_avx512 in turns, us: 4096^2 430-496 ->
// 374-420 (torch's amax over the same weight copies: 331-364), hot 364-402 -> 325-341;
// 11008 x 4096 1323-1515 -> 1045-1433; 1536 x 576 54-62 -> 43-45; 576 x 1536 42-48 -> 41-44.
// x must stay in L1 for every weight row: 4096 x 11008 took twice as long (44 KB of x).
constexpr int64_t kRowDotMaxK = 4096;

MYQ_TARGET_AVX512 float row_dot_avx512(const float* x, int64_t K, const int8_t* w,
                                       int64_t ahead) {
  __m512 acc[4];
  for (auto& a : acc) a = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    prefetch_to_l2(w + k + ahead);  // without it: 4096^2 twice as slow
    for (int c = 0; c < 4; ++c)
      acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * c),
                               load_i8_ps_avx512(w + k + 16 * c), acc[c]);
  }
  for (; k < K; k += 16) {
    const __mmask16 mask =
        K - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
    acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + k), maskload_i8_ps_avx512(mask, w + k),
                             acc[0]);
  }
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// ---------------------------------------------------------------- AVX512-BF16
// bfloat16 x, a few rows: int8 weights are exact in bfloat16 (exact_bf16_bits), so one
// vdpbf16ps adds 32 exact products x * w into float32 where the float32 path widens the same
// 32 weights to floats and takes two FMAs per row of x; the widening is shared by the MR rows.
// The last K % 32 columns are summed in scalar code (a masked step in the loop made GCC keep
// the accumulators in memory).
template <int MR, int NR>
MYQ_TARGET_AVX512_BF16 void block_bf16(const c10::BFloat16* x, int64_t K,
                                       const int8_t* const* wr, float* out) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t ahead = prefetch_ahead(NR * K);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_si512(x + i * K + k);
    if ((k & 63) == 0)  // once per cache line of each row
      for (int j = 0; j < NR; ++j) prefetch_to_l2(wr[j] + k + ahead);
    for (int j = 0; j < NR; ++j) {
      __m512 lo, hi;
      load_i8x32_ps(wr[j] + k, &lo, &hi);
      const __m512i wv = exact_bf16_bits(lo, hi);
      for (int i = 0; i < MR; ++i) acc[i][j] = dpbf16(acc[i][j], wv, xv[i]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float sum = _mm512_reduce_add_ps(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk)
        sum += static_cast<float>(x[i * K + kk]) * static_cast<float>(wr[j][kk]);
      out[i * NR + j] = sum;
    }
}

// ---------------------------------------------------------------- AVX2
// Weights are prefetched kPrefetchBlocks row blocks ahead, in address order
// (prefetch_block_lines). Short rows (K = 576) are too short for the hardware prefetcher to
// ramp up on its own, and a prefetch of one line in each row of the block left it behind too.
// Measured cold on Zen 3 (weights cycled through 256 MB, 2 threads), M = 1, in a C loop, us:
// 1536 x 576 no prefetch 158-194, per row 4 blocks ahead 103-130, in address order 2 blocks
// ahead 52-58 (with the one-row kernel of the time); 4096^2 1169-1241 (no prefetch) -> 867-1054.
constexpr int64_t kPrefetchBlocks = 2;

// The AVX2 blocks are dot_block_avx2 (simd.h). NR shrinks as MR grows (rows_per_block),
// measured on Zen 3, one core, L2-resident weights, in G vector FMAs/s (a loop of independent
// FMAs: 6.9-7.1): MR x NR = 2x4 3.4, 2x6 3.8, 3x4 4.1, 4x2 2.7, 4x3 4.5, 8x1 2.3.
// One row of x (decode) widens each weight with vpmovsxbd + vcvtdq2ps, 8 rows per block. An
// earlier kernel that dropped the bytes into the float 2^23 with vpshufb (fewer conversions,
// more instructions) was slower: the two in one process, alternating call by call, 2 threads,
// median us of 1000 calls each, cold (weights cycled through 256 MB) unless marked: 4096^2
// 1285 -> 1140 and 1547 -> 1421, hot 1488 -> 1322 and 900 -> 738; 11008 x 4096 3857 -> 3498
// and 4380 -> 4034; 1536 x 576 116 -> 115 and 576 x 1536 127 -> 128 (the same).

// ---------------------------------------------------------------- driver (all vector paths)
// The GEMV kernels: float32 x in AVX-512 or AVX2 FMAs, bfloat16 x in AVX512-BF16 dot products.
enum class Gemv { kAvx512, kAvx2, kAvx512Bf16 };

// Rows of x per pass over a column block: block_bf16 takes up to 8 (its widened weights then
// serve 8 rows; 16 accumulators as 8 x 2), the float32 kernels up to 4. Zen 4, cold, in turns,
// block_bf16 in passes of 4 / of 8 rows: 4096^2 M = 5 1.24x, 7 1.19x, 8 1.10-1.13x, 12 1.07x;
// 11008x4096 M = 8 1.04x; 1536x576 M = 6 / 8 1.03 / 1.10x.
constexpr int kBf16MaxRowsPerPass = 8;

template <Gemv P>
constexpr int rows_per_pass(int64_t left) {
  return P == Gemv::kAvx512Bf16
             ? static_cast<int>(std::min<int64_t>(left, kBf16MaxRowsPerPass))
             : gemv_rows_per_pass(left);
}

// Weight rows per block for MR rows of x: AVX-512 4 (16 zmm accumulators at MR = 4), 2 for
// block_bf16 beyond 4 rows of x.
template <Gemv P>
constexpr int rows_per_block(int mr) {
  if constexpr (P == Gemv::kAvx2) return mr == 1 ? 8 : mr == 2 ? 6 : mr == 3 ? 4 : 3;
  return P == Gemv::kAvx512Bf16 && mr > 4 ? 2 : kNR;
}

// MR > 4 comes only from rows_per_pass<kAvx512Bf16>; the float32 kernels are not built for it.
template <int MR, Gemv P, typename X>
void run_block(const X* x, int64_t K, const int8_t* const* wr, float* out) {
  if constexpr (P == Gemv::kAvx512Bf16) {
    block_bf16<MR, rows_per_block<P>(MR)>(x, K, wr, out);
  } else if constexpr (MR <= 4) {
    if constexpr (P == Gemv::kAvx512) block_avx512<MR>(x, K, wr, out);
    else dot_block_avx2<MR, rows_per_block<P>(MR), kPrefetchBlocks>(x, K, wr, out);
  }
}

// Columns [n0, n1) in blocks of kColumns weight rows (L2-resident while every block of MR
// rows of x passes over them, so the weights stream from memory once for any M); a multiple
// of every rows_per_block.
constexpr int64_t kColumns = 24;

template <Gemv P, typename X>
void gemv_vector(const X* x, int64_t M, int64_t K, const int8_t* w, const float* scale,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  constexpr int kMaxMR = rows_per_pass<P>(kBf16MaxRowsPerPass);
  constexpr int kMaxNR = rows_per_block<P>(1);
  float out[kMaxMR * kMaxNR];
  if constexpr (P == Gemv::kAvx512) {
    if (M == 1 && K <= kRowDotMaxK) {
      const int64_t ahead = prefetch_ahead(K);
      for (int64_t n = n0; n < n1; ++n)
        y[n] = row_dot_avx512(x, K, w + n * K, ahead) * scale[n] + (bias ? bias[n] : 0.f);
      return;
    }
  }
  for (int64_t nc = n0; nc < n1; nc += kColumns) {
    const int64_t nc1 = std::min(n1, nc + kColumns);
    int mr = 0;
    for (int64_t m = 0; m < M; m += mr) {
      mr = rows_per_pass<P>(M - m);
      const int nr_block = rows_per_block<P>(mr);
      const X* xm = x + m * K;
      for (int64_t nb = nc; nb < nc1; nb += nr_block) {
        const int nr = static_cast<int>(std::min<int64_t>(nr_block, nc1 - nb));
        const int8_t* wr[kMaxNR];
        for (int j = 0; j < nr_block; ++j) wr[j] = w + (nb + std::min(j, nr - 1)) * K;  // pad: repeat last
        switch (mr) {
          case 1: run_block<1, P>(xm, K, wr, out); break;
          case 2: run_block<2, P>(xm, K, wr, out); break;
          case 3: run_block<3, P>(xm, K, wr, out); break;
          case 4: run_block<4, P>(xm, K, wr, out); break;
          case 5: run_block<5, P>(xm, K, wr, out); break;
          case 6: run_block<6, P>(xm, K, wr, out); break;
          case 7: run_block<7, P>(xm, K, wr, out); break;
          default: run_block<8, P>(xm, K, wr, out); break;
        }
        for (int i = 0; i < mr; ++i)
          for (int j = 0; j < nr; ++j) {
            const int64_t n = nb + j;
            y[(m + i) * ldy + n] = out[i * nr_block + j] * scale[n] + (bias ? bias[n] : 0.f);
          }
      }
    }
  }
}

// ---------------------------------------------------------------- dequant
void dequant_scalar(const int8_t* w, int64_t K, int64_t n0, int64_t n1, float* tile) {
  const int8_t* src = w + n0 * K;
  const int64_t count = (n1 - n0) * K;
  for (int64_t i = 0; i < count; ++i) tile[i] = static_cast<float>(src[i]);
}

MYQ_TARGET_AVX512 void dequant_avx512(const int8_t* w, int64_t K, int64_t n0, int64_t n1,
                                      float* tile) {
  const int8_t* src = w + n0 * K;
  const int64_t count = (n1 - n0) * K;
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + 2048, _MM_HINT_T0);
    __m512 f0, f1;
    load_i8x32_ps(src + i, &f0, &f1);
    _mm512_storeu_ps(tile + i, f0);
    _mm512_storeu_ps(tile + i + 16, f1);
  }
  for (; i < count; i += 16) {
    const __mmask16 mask =
        count - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512i v = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, src + i));
    _mm512_mask_storeu_ps(tile + i, mask, _mm512_cvtepi32_ps(v));
  }
}

}  // namespace

void int8_gemv(Isa isa, const float* x, int64_t M, int64_t K, const int8_t* w,
               const float* scale, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  switch (isa) {
    case Isa::Avx512Vnni:
      gemv_vector<Gemv::kAvx512>(x, M, K, w, scale, bias, y, ldy, n0, n1);
      break;
    case Isa::Avx2: gemv_vector<Gemv::kAvx2>(x, M, K, w, scale, bias, y, ldy, n0, n1); break;
    default: gemv_scalar(x, M, K, w, scale, bias, y, ldy, n0, n1); break;
  }
}

void int8_gemv_bf16(const c10::BFloat16* x, int64_t M, int64_t K, const int8_t* w,
                    const float* scale, const float* bias, float* y, int64_t ldy, int64_t n0,
                    int64_t n1) {
  gemv_vector<Gemv::kAvx512Bf16>(x, M, K, w, scale, bias, y, ldy, n0, n1);
}

void int8_dequant(Isa isa, const int8_t* w, int64_t K, int64_t n0, int64_t n1, float* tile) {
  // The AVX2 path relies on the compiler's auto-vectorised scalar loop (baseline SSE2):
  // the dequant is a small part of a large-M product.
  if (isa == Isa::Avx512Vnni) dequant_avx512(w, K, n0, n1, tile);
  else dequant_scalar(w, K, n0, n1, tile);
}

}  // namespace myq
