// W4A16 kernels: packed int4 weights [N, K/2] with per-group scales / zero points.
//
// Small M: activations are reordered once per call (int4_prepare_x) so that the low and
// high nibbles of 16 packed bytes meet 16 contiguous x values each; a row is streamed
// once per block of MR activation rows, NR rows at a time. Within a group the products
// sum(x * q) accumulate unscaled, then one FMA per group applies the group scale; the
// zero point enters once at the end as sum_g scale*zero*sum(x in group).
// Large M: int4_dequant fills a float32 / bfloat16 tile for at::mm in the binding.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels.h"

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
template <int MR>
MYQ_TARGET_AVX512 void block_avx512(const float* xp, int64_t K, int64_t gs,
                                    const uint8_t* const* pr, const float* const* sr,
                                    float* out) {
  const __m512i low4 = _mm512_set1_epi32(15);
  __m512 acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t G = K / gs;
  for (int64_t g = 0; g < G; ++g) {
    __m512 part[MR][kNR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNR; ++j) part[i][j] = _mm512_setzero_ps();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kInt4Chunk) {
      __m512 xlo[MR], xhi[MR];
      for (int i = 0; i < MR; ++i) {
        xlo[i] = _mm512_loadu_ps(xp + i * K + k);
        xhi[i] = _mm512_loadu_ps(xp + i * K + k + 16);
      }
      for (int j = 0; j < kNR; ++j) {
        __m512i v = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(pr[j] + k / 2)));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, low4));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        for (int i = 0; i < MR; ++i) {
          part[i][j] = _mm512_fmadd_ps(xlo[i], lo, part[i][j]);
          part[i][j] = _mm512_fmadd_ps(xhi[i], hi, part[i][j]);
        }
      }
    }
    for (int j = 0; j < kNR; ++j) {
      const __m512 s = _mm512_set1_ps(sr[j][g]);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(part[i][j], s, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) out[i * kNR + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// ---------------------------------------------------------------- AVX2
MYQ_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MR>
MYQ_TARGET_AVX2 void block_avx2(const float* xp, int64_t K, int64_t gs,
                                const uint8_t* const* pr, const float* const* sr, float* out) {
  const __m256i low4 = _mm256_set1_epi32(15);
  __m256 acc[MR][kNR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t G = K / gs;
  for (int64_t g = 0; g < G; ++g) {
    __m256 part[MR][kNR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNR; ++j) part[i][j] = _mm256_setzero_ps();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += kInt4Chunk) {
      for (int h = 0; h < 2; ++h) {  // bytes 0..7 then 8..15 of the chunk
        __m256 xlo[MR], xhi[MR];
        for (int i = 0; i < MR; ++i) {
          xlo[i] = _mm256_loadu_ps(xp + i * K + k + 8 * h);
          xhi[i] = _mm256_loadu_ps(xp + i * K + k + 16 + 8 * h);
        }
        for (int j = 0; j < kNR; ++j) {
          __m256i v = _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(pr[j] + k / 2 + 8 * h)));
          __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low4));
          __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
          for (int i = 0; i < MR; ++i) {
            part[i][j] = _mm256_fmadd_ps(xlo[i], lo, part[i][j]);
            part[i][j] = _mm256_fmadd_ps(xhi[i], hi, part[i][j]);
          }
        }
      }
    }
    for (int j = 0; j < kNR; ++j) {
      const __m256 s = _mm256_set1_ps(sr[j][g]);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(part[i][j], s, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNR; ++j) out[i * kNR + j] = hsum_avx2(acc[i][j]);
}

template <bool kAvx512>
void gemv_vector(const float* xp, const float* xsum, int64_t M, int64_t K,
                 const uint8_t* packed, const float* scales, const float* zeros, int64_t gs,
                 const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  constexpr int kMaxMR = kAvx512 ? 2 : 1;  // accumulators + per-group partials in registers
  const int64_t G = K / gs;
  float out[kMaxMR * kNR];
  for (int64_t nb = n0; nb < n1; nb += kNR) {
    const int nr = static_cast<int>(std::min<int64_t>(kNR, n1 - nb));
    const uint8_t* pr[kNR];
    const float* sr[kNR];
    for (int j = 0; j < kNR; ++j) {
      const int64_t n = nb + std::min(j, nr - 1);  // pad: repeat the last row
      pr[j] = packed + n * (K / 2);
      sr[j] = scales + n * G;
    }
    for (int64_t m = 0; m < M; m += kMaxMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMaxMR, M - m));
      const float* xm = xp + m * K;
      if constexpr (kAvx512) {
        if (mr == 2) block_avx512<2>(xm, K, gs, pr, sr, out);
        else block_avx512<1>(xm, K, gs, pr, sr, out);
      } else {
        block_avx2<1>(xm, K, gs, pr, sr, out);
      }
      for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) {
          const int64_t n = nb + j;
          y[(m + i) * ldy + n] = finish(out[i * kNR + j], xsum + (m + i) * G, scales + n * G,
                                        zeros ? zeros + n * G : nullptr, G, bias, n);
        }
    }
  }
}

// ---------------------------------------------------------------- dequant
template <typename T>
void dequant_scalar(const uint8_t* packed, const float* scales, const float* zeros,
                    int64_t gs, int64_t K, int64_t n0, int64_t n1, T* tile) {
  const int64_t G = K / gs;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    T* out = tile + (n - n0) * K;
    for (int64_t k = 0; k < K; k += 2) {
      const int64_t g = k / gs;  // gs is even: k and k + 1 share the group
      const float s = scales[n * G + g], z = zero_at(zeros, n * G + g);
      out[k] = static_cast<T>((static_cast<float>(pr[k / 2] & 15) - z) * s);
      out[k + 1] = static_cast<T>((static_cast<float>(pr[k / 2] >> 4) - z) * s);
    }
  }
}

// float -> bfloat16, round to nearest even (finite inputs), 16 lanes.
MYQ_TARGET_AVX512 inline __m256i to_bf16_avx512(__m512 f) {
  __m512i bits = _mm512_castps_si512(f);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

template <typename T>
MYQ_TARGET_AVX512 inline void store16_avx512(T* dst, __mmask16 mask, __m512 v) {
  if constexpr (std::is_same_v<T, float>) _mm512_mask_storeu_ps(dst, mask, v);
  else _mm256_mask_storeu_epi16(dst, mask, to_bf16_avx512(v));
}

template <typename T>
MYQ_TARGET_AVX512 void dequant_avx512(const uint8_t* packed, const float* scales,
                                      const float* zeros, int64_t gs, int64_t K, int64_t n0,
                                      int64_t n1, T* tile) {
  const int64_t G = K / gs;
  const __m512i low4 = _mm512_set1_epi32(15);
  // lo = q[0, 2, ..., 30], hi = q[1, 3, ..., 31]: interleave back to natural order.
  const __m512i idx_a = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i idx_b =
      _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* pr = packed + n * (K / 2);
    T* out = tile + (n - n0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const __m512 s = _mm512_set1_ps(scales[n * G + g]);
      const __m512 z = _mm512_set1_ps(zero_at(zeros, n * G + g));
      const int64_t b_end = (g + 1) * gs / 2;
      for (int64_t b = g * gs / 2; b < b_end; b += 16) {
        const int64_t nb = std::min<int64_t>(16, b_end - b);
        const __mmask16 mask = nb == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nb) - 1);
        __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, pr + b));
        __m512 lo = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, low4)), z), s);
        __m512 hi = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), z), s);
        const int64_t ne = 2 * nb;  // elements in this step
        const __mmask16 m0 = ne >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << ne) - 1);
        const __mmask16 m1 = ne >= 32 ? __mmask16(0xFFFF)
                             : ne > 16 ? __mmask16((1u << (ne - 16)) - 1) : __mmask16(0);
        store16_avx512<T>(out + 2 * b, m0, _mm512_permutex2var_ps(lo, idx_a, hi));
        store16_avx512<T>(out + 2 * b + 16, m1, _mm512_permutex2var_ps(lo, idx_b, hi));
      }
    }
  }
}

}  // namespace

bool int4_gemv_supported(int64_t group_size) { return group_size % kInt4Chunk == 0; }

void int4_prepare_x(const float* x, int64_t M, int64_t K, int64_t group_size, float* xp,
                    float* xsum) {
  const int64_t G = K / group_size;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float* pr = xp + m * K;
    for (int64_t c = 0; c + kInt4Chunk <= K; c += kInt4Chunk)
      for (int b = 0; b < 16; ++b) {
        pr[c + b] = xr[c + 2 * b];
        pr[c + 16 + b] = xr[c + 2 * b + 1];
      }
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) s += xr[k];
      xsum[m * G + g] = s;
    }
  }
}

void int4_gemv(Isa isa, const float* xp, const float* xsum, int64_t M, int64_t K,
               const uint8_t* packed, const float* scales, const float* zeros,
               int64_t group_size, const float* bias, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  switch (isa) {
    case Isa::Avx512Vnni:
      gemv_vector<true>(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
      break;
    case Isa::Avx2:
      gemv_vector<false>(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
      break;
    default:
      gemv_scalar(xp, xsum, M, K, packed, scales, zeros, group_size, bias, y, ldy, n0, n1);
      break;
  }
}

template <typename T>
void int4_dequant(Isa isa, const uint8_t* packed, const float* scales, const float* zeros,
                  int64_t group_size, int64_t K, int64_t n0, int64_t n1, T* tile) {
  if (isa == Isa::Avx512Vnni) dequant_avx512<T>(packed, scales, zeros, group_size, K, n0, n1, tile);
  else dequant_scalar<T>(packed, scales, zeros, group_size, K, n0, n1, tile);
}

template void int4_dequant<float>(Isa, const uint8_t*, const float*, const float*, int64_t,
                                  int64_t, int64_t, int64_t, float*);
template void int4_dequant<c10::BFloat16>(Isa, const uint8_t*, const float*, const float*,
                                          int64_t, int64_t, int64_t, int64_t, c10::BFloat16*);

}  // namespace myq
