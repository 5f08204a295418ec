// pack_int4 / unpack_int4: byte i holds element 2i in its low nibble, 2i+1 in its high.
// Packing matches the reference for any byte input: q[2i] | (q[2i+1] << 4), mod 256.
#include <immintrin.h>

#include <algorithm>

#include "kernels.h"

namespace myq {
namespace {

void pack_scalar(const uint8_t* q, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<uint8_t>(q[2 * i] | (q[2 * i + 1] << 4));
}

void unpack_scalar(const uint8_t* p, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[2 * i] = p[i] & 15;
    out[2 * i + 1] = p[i] >> 4;
  }
}

MYQ_TARGET_AVX512 void pack_avx512(const uint8_t* q, uint8_t* out, int64_t n) {
  const __m512i low8 = _mm512_set1_epi16(0x00FF), mid = _mm512_set1_epi16(0x0FF0);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    // 16-bit lane = q[2i] + 256 q[2i+1]  ->  low byte q[2i] | (q[2i+1] << 4)
    __m512i v = _mm512_loadu_si512(q + 2 * i);
    __m512i r = _mm512_or_si512(_mm512_and_si512(v, low8),
                                _mm512_and_si512(_mm512_srli_epi16(v, 4), mid));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi16_epi8(r));
  }
  pack_scalar(q + 2 * i, out + i, n - i);
}

MYQ_TARGET_AVX512 void unpack_avx512(const uint8_t* p, uint8_t* out, int64_t n) {
  const __m512i low4 = _mm512_set1_epi16(0x000F);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    __m512i r = _mm512_or_si512(_mm512_and_si512(v, low4),
                                _mm512_slli_epi16(_mm512_srli_epi16(v, 4), 8));
    _mm512_storeu_si512(out + 2 * i, r);
  }
  unpack_scalar(p + i, out + 2 * i, n - i);
}

MYQ_TARGET_AVX2 void pack_avx2(const uint8_t* q, uint8_t* out, int64_t n) {
  const __m256i low8 = _mm256_set1_epi16(0x00FF), mid = _mm256_set1_epi16(0x0FF0);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * i));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * i + 32));
    a = _mm256_or_si256(_mm256_and_si256(a, low8), _mm256_and_si256(_mm256_srli_epi16(a, 4), mid));
    b = _mm256_or_si256(_mm256_and_si256(b, low8), _mm256_and_si256(_mm256_srli_epi16(b, 4), mid));
    a = _mm256_and_si256(a, low8);  // packus saturates: keep each lane within a byte
    b = _mm256_and_si256(b, low8);
    __m256i r = _mm256_permute4x64_epi64(_mm256_packus_epi16(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), r);
  }
  pack_scalar(q + 2 * i, out + i, n - i);
}

MYQ_TARGET_AVX2 void unpack_avx2(const uint8_t* p, uint8_t* out, int64_t n) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    __m256i lo = _mm256_and_si256(v, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
    __m256i a = _mm256_unpacklo_epi8(lo, hi), b = _mm256_unpackhi_epi8(lo, hi);
    // unpack works per 128-bit lane: reorder to bytes 0..15 | 16..31 of p.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i + 32), _mm256_permute2x128_si256(a, b, 0x31));
  }
  unpack_scalar(p + i, out + 2 * i, n - i);
}

}  // namespace

void pack_int4(Isa isa, const uint8_t* q, uint8_t* out, int64_t n_out) {
  switch (isa) {
    case Isa::Avx512Vnni: pack_avx512(q, out, n_out); break;
    case Isa::Avx2: pack_avx2(q, out, n_out); break;
    default: pack_scalar(q, out, n_out); break;
  }
}

void unpack_int4(Isa isa, const uint8_t* p, uint8_t* out, int64_t n_in) {
  switch (isa) {
    case Isa::Avx512Vnni: unpack_avx512(p, out, n_in); break;
    case Isa::Avx2: unpack_avx2(p, out, n_in); break;
    default: unpack_scalar(p, out, n_in); break;
  }
}

}  // namespace myq
