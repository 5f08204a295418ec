// W8A16 kernels: int8 weights [N, K] times float32 activations, fp32 accumulation.
//
// Small M (decode): each weight row is streamed once per block of MR activation rows;
// int8 is widened to fp32 in registers and FMA'd against x, NR weight rows at a time,
// so each x vector load feeds NR FMAs and each weight vector feeds MR FMAs.
// Large M: int8_dequant fills a tile that the binding multiplies with at::mm.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

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
        _mm_prefetch(reinterpret_cast<const char*>(wr[j] + k) + ahead, _MM_HINT_T0);
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

// ---------------------------------------------------------------- AVX2
// Weights are prefetched kPrefetchBlocks row blocks ahead, in address order
// (prefetch_block_lines). Short rows (K = 576) are too short for the hardware prefetcher to
// ramp up on its own, and a prefetch of one line in each row of the block left it behind too.
// Measured cold on Zen 3 (weights cycled through 256 MB, 2 threads), M = 1, in a C loop, us:
// 1536 x 576 no prefetch 158-194, per row 4 blocks ahead 103-130, in address order 2 blocks
// ahead 52-58 (with row_block_avx2); 4096^2 1169-1241 (no prefetch) -> 867-1054.
constexpr int64_t kPrefetchBlocks = 2;

// From two rows of x the blocks are dot_block_avx2 (simd.h). NR shrinks as MR grows
// (rows_per_block), measured on Zen 3, one core, L2-resident weights, in G vector FMAs/s
// (a loop of independent FMAs: 6.9-7.1): MR x NR = 2x4 3.4, 2x6 3.8, 3x4 4.1, 4x2 2.7,
// 4x3 4.5, 8x1 2.3.

// One row of x (decode) is bound by widening the weights, not by FMAs: vpmovsxbd + vcvtdq2ps
// reach ~12-14 G weights/s per core on Zen 3. Here 32 weight bytes are loaded at once,
// offset to unsigned (u = w + 128), and vpshufb drops 8 of them into the low bytes of the
// float 2^23, whose bits then hold 2^23 + u exactly: subtracting 2^23 + 128 leaves w. vpshufb
// stays within 128-bit lanes, so float vector g holds weights k = 4g..4g+3, 16+4g..16+4g+3 of
// the chunk; x comes reordered to match (reorder_x_for_row_block). In a C loop, cold, 2
// threads, with the prefetch above: 4096^2 1282 -> 924-1055 us; 1536 x 576 68 -> 52-60 us
// (through the op, alternating processes: benchmarks/RESULTS.md).
constexpr int64_t kRowChunk = 32;
constexpr int kRowNR = 8;

// xr[c + 8g + 4l + d] = x[c + 16l + 4g + d] in every whole chunk c of kRowChunk; the tail as is.
void reorder_x_for_row_block(const float* x, int64_t K, float* xr) {
  const int64_t whole = K / kRowChunk * kRowChunk;
  for (int64_t c = 0; c < whole; c += kRowChunk)
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < 2; ++l)
        for (int d = 0; d < 4; ++d) xr[c + 8 * g + 4 * l + d] = x[c + 16 * l + 4 * g + d];
  std::copy(x + whole, x + K, xr + whole);
}

MYQ_TARGET_AVX2 void row_block_avx2(const float* xr, int64_t K, const int8_t* const* wr,
                                    float* out) {
  const __m256i to_unsigned = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i two23_bits = _mm256_set1_epi32(0x4B000000);
  const __m256 two23_plus_128 = _mm256_set1_ps(8388608.f + 128.f);
  __m256i pick[4];  // byte 4g + d of each lane into the low byte of dword d, zeros above
  for (int g = 0; g < 4; ++g) {
    const int b = 4 * g;
    pick[g] = _mm256_setr_epi8(b, -1, -1, -1, b + 1, -1, -1, -1, b + 2, -1, -1, -1, b + 3, -1, -1, -1,
                               b, -1, -1, -1, b + 1, -1, -1, -1, b + 2, -1, -1, -1, b + 3, -1, -1, -1);
  }
  __m256 acc[kRowNR];
  for (int j = 0; j < kRowNR; ++j) acc[j] = _mm256_setzero_ps();
  const int64_t ahead = kPrefetchBlocks * kRowNR * K;
  int64_t k = 0;
  for (; k + kRowChunk <= K; k += kRowChunk) {
    if ((k & 63) == 0) prefetch_block_lines<kRowNR>(wr[0], ahead, k / 64);
    __m256 xv[4];
    for (int g = 0; g < 4; ++g) xv[g] = _mm256_loadu_ps(xr + k + 8 * g);
    for (int j = 0; j < kRowNR; ++j) {
      const __m256i u = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[j] + k)), to_unsigned);
      for (int g = 0; g < 4; ++g) {
        const __m256 biased =
            _mm256_castsi256_ps(_mm256_or_si256(_mm256_shuffle_epi8(u, pick[g]), two23_bits));
        acc[j] = _mm256_fmadd_ps(xv[g], _mm256_sub_ps(biased, two23_plus_128), acc[j]);
      }
    }
  }
  for (int j = 0; j < kRowNR; ++j) {
    float s = hsum_avx2(acc[j]);
    for (int64_t kk = k; kk < K; ++kk) s += xr[kk] * static_cast<float>(wr[j][kk]);
    out[j] = s;
  }
}

// ---------------------------------------------------------------- driver (all vector paths)
// Weight rows per block for MR rows of x: AVX-512 always 4 (16 zmm accumulators at MR = 4).
template <bool kAvx512>
constexpr int rows_per_block(int mr) {
  return kAvx512 ? kNR : mr == 1 ? 8 : mr == 2 ? 6 : mr == 3 ? 4 : 3;
}

// AVX2 with MR = 1 (only when M = 1, see gemv_rows_per_pass) reads x reordered for row_block_avx2.
template <int MR, bool kAvx512>
void run_block(const float* x, int64_t K, const int8_t* const* wr, float* out) {
  if constexpr (kAvx512) block_avx512<MR>(x, K, wr, out);
  else if constexpr (MR == 1) row_block_avx2(x, K, wr, out);
  else dot_block_avx2<MR, rows_per_block<false>(MR), kPrefetchBlocks>(x, K, wr, out);
}


// Columns [n0, n1) in blocks of kColumns weight rows (L2-resident while every block of MR
// rows of x passes over them, so the weights stream from memory once for any M); a multiple
// of every rows_per_block.
constexpr int64_t kColumns = 24;

template <bool kAvx512>
void gemv_vector(const float* x, int64_t M, int64_t K, const int8_t* w, const float* scale,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  constexpr int kMaxMR = 4;
  constexpr int kMaxNR = rows_per_block<kAvx512>(1);
  float out[kMaxMR * kMaxNR];
  for (int64_t nc = n0; nc < n1; nc += kColumns) {
    const int64_t nc1 = std::min(n1, nc + kColumns);
    int mr = 0;
    for (int64_t m = 0; m < M; m += mr) {
      mr = gemv_rows_per_pass(M - m);
      const int nr_block = rows_per_block<kAvx512>(mr);
      const float* xm = x + m * K;
      for (int64_t nb = nc; nb < nc1; nb += nr_block) {
        const int nr = static_cast<int>(std::min<int64_t>(nr_block, nc1 - nb));
        const int8_t* wr[kMaxNR];
        for (int j = 0; j < nr_block; ++j) wr[j] = w + (nb + std::min(j, nr - 1)) * K;  // pad: repeat last
        switch (mr) {
          case 1: run_block<1, kAvx512>(xm, K, wr, out); break;
          case 2: run_block<2, kAvx512>(xm, K, wr, out); break;
          case 3: run_block<3, kAvx512>(xm, K, wr, out); break;
          default: run_block<4, kAvx512>(xm, K, wr, out); break;
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
template <typename T>
void dequant_scalar(const int8_t* w, int64_t K, int64_t n0, int64_t n1, T* tile) {
  const int8_t* src = w + n0 * K;
  const int64_t count = (n1 - n0) * K;
  for (int64_t i = 0; i < count; ++i) tile[i] = static_cast<T>(static_cast<float>(src[i]));
}

template <typename T>
MYQ_TARGET_AVX512 void dequant_avx512(const int8_t* w, int64_t K, int64_t n0, int64_t n1,
                                      T* tile) {
  const int8_t* src = w + n0 * K;
  const int64_t count = (n1 - n0) * K;
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + 2048, _MM_HINT_T0);
    __m512 f0, f1;
    load_i8x32_ps(src + i, &f0, &f1);
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(tile + i, f0);
      _mm512_storeu_ps(tile + i + 16, f1);
    } else {
      _mm512_storeu_si512(tile + i, exact_bf16_bits(f0, f1));
    }
  }
  for (; i < count; i += 16) {
    const __mmask16 mask =
        count - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
    __m512i v = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, src + i));
    if constexpr (std::is_same_v<T, float>) {
      _mm512_mask_storeu_ps(tile + i, mask, _mm512_cvtepi32_ps(v));
    } else {
      __m512i bits = _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(v)), 16);
      _mm256_mask_storeu_epi16(tile + i, mask, _mm512_cvtepi32_epi16(bits));
    }
  }
}

}  // namespace

void int8_gemv(Isa isa, const float* x, int64_t M, int64_t K, const int8_t* w,
               const float* scale, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  switch (isa) {
    case Isa::Avx512Vnni: gemv_vector<true>(x, M, K, w, scale, bias, y, ldy, n0, n1); break;
    case Isa::Avx2:
      if (M == 1) {
        thread_local std::vector<float> xr;
        xr.resize(K);
        reorder_x_for_row_block(x, K, xr.data());
        gemv_vector<false>(xr.data(), M, K, w, scale, bias, y, ldy, n0, n1);
      } else {
        gemv_vector<false>(x, M, K, w, scale, bias, y, ldy, n0, n1);
      }
      break;
    default: gemv_scalar(x, M, K, w, scale, bias, y, ldy, n0, n1); break;
  }
}

template <typename T>
void int8_dequant(Isa isa, const int8_t* w, int64_t K, int64_t n0, int64_t n1, T* tile) {
  // The AVX2 path relies on the compiler's auto-vectorised scalar loop (baseline SSE2):
  // the dequant is a small part of a large-M product.
  if (isa == Isa::Avx512Vnni) dequant_avx512<T>(w, K, n0, n1, tile);
  else dequant_scalar<T>(w, K, n0, n1, tile);
}

template void int8_dequant<float>(Isa, const int8_t*, int64_t, int64_t, int64_t, float*);
template void int8_dequant<c10::BFloat16>(Isa, const int8_t*, int64_t, int64_t, int64_t,
                                          c10::BFloat16*);

}  // namespace myq
