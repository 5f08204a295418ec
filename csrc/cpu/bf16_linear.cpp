// W8A16 / W4A16 on bfloat16 dot-product hardware: Intel AMX-BF16 tiles, or AVX512-BF16
// (vdpbf16ps) on CPUs without AMX (AMD Zen 4 / Zen 5). bfloat16 activations, and float32 /
// float16 activations split into bfloat16 planes (XPlanes in kernels.h).
//
// C[n, m] = sum_k A[n, k] * B[k, m]: A = 32 weight rows converted to bfloat16 once per task
// into a per-thread row-major buffer, B = x packed into the VNNI pair layout (amx_pack_rows),
// C = 32 rows of W x 32 rows of x, float32. AMX loads A as tiles with a row stride; the
// AVX512-BF16 kernel broadcasts one pair (w[n, k], w[n, k + 1]) of A against a vector of 16
// rows' pairs of B, so both share the converters, the packing of x and the epilogue.
// bf16 x bf16 products are exact and both sum them in float32, so int8 weights give
// float32-accurate results (no bf16 rounding of the product, unlike a bf16 GEMM); the
// scale and bias are applied in float32 in the epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "amx.h"
#include "kernels.h"
#include "simd.h"

namespace myq {
namespace {

constexpr int64_t kPair = kAmxRowPair;  // weight rows converted per step
constexpr int kTileElems = 16 * 32;      // bf16 elements in one 16 x 32 tile

// Converters: a[rr * lda + (k - k0)] = bf16 weight [n0 + rr, k] for rr < 32, k in [k0, k1)
// (multiples of 32); rows >= N are zero. for_each_row calls fill(n, dst) for the rows below
// N, with dst[k] the A-buffer element of column k.
template <typename Fill>
MYQ_TARGET_AVX512 void for_each_row(int64_t n0, int64_t N, int64_t k0, int64_t k1, uint16_t* a,
                                    int64_t lda, const Fill& fill) {
  for (int64_t rr = 0; rr < kPair; ++rr) {
    uint16_t* dst = a + rr * lda - k0;
    if (n0 + rr < N) fill(n0 + rr, dst);
    else std::memset(dst + k0, 0, (k1 - k0) * sizeof(uint16_t));
  }
}

struct Int8Rows {
  const int8_t* w;
  int64_t K, N;
  MYQ_TARGET_AVX512 void operator()(int64_t n0, int64_t k0, int64_t k1, uint16_t* a,
                                 int64_t lda) const {
    for_each_row(n0, N, k0, k1, a, lda, [&](int64_t n, uint16_t* dst) MYQ_TARGET_AVX512 {
      const int8_t* src = w + n * K;
      for (int64_t k = k0; k < k1; k += kAmxBf16K) {
        if ((k & 63) == 0) prefetch_to_l2(src + k + (k1 - k0));
        __m512 lo, hi;
        load_i8x32_ps(src + k, &lo, &hi);
        _mm512_storeu_si512(dst + k, exact_bf16_bits(lo, hi));
      }
    });
  }
};

// int4 (group_size % 32 == 0): per group a 16-entry table (q - zero) * scale, rounded to
// bf16 (as int4_dequant), looked up with vpermw. Without scales the table holds q - zero,
// small integers exact in bf16, and the caller applies the group scales (GroupScales).
struct Int4Rows {
  const uint8_t* packed;
  const float* scales;
  const float* zeros;
  int64_t gs, K, N;
  MYQ_TARGET_AVX512 void operator()(int64_t n0, int64_t k0, int64_t k1, uint16_t* a,
                                 int64_t lda) const {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    // lo = q[0, 2, ..., 30], hi = q[1, 3, ..., 31] (words 0..15 of each) -> natural order
    const __m512i widx = _mm512_set_epi16(
        47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const int64_t G = K / gs;
    for_each_row(n0, N, k0, k1, a, lda, [&](int64_t n, uint16_t* dst) MYQ_TARGET_AVX512 {
      const uint8_t* src = packed + n * (K / 2);
      for (int64_t g = k0 / gs; g * gs < k1; ++g) {
        const float z = zeros ? zeros[n * G + g] : 8.f;
        const __m512 q = _mm512_sub_ps(iota, _mm512_set1_ps(z));
        const __m512 tab = scales ? _mm512_mul_ps(q, _mm512_set1_ps(scales[n * G + g])) : q;
        const __m256i t16 = bf16_round_bits(tab);
        const __m512i wtab = _mm512_inserti64x4(_mm512_castsi256_si512(t16), t16, 1);
        const int64_t ke = std::min(k1, (g + 1) * gs);
        for (int64_t k = std::max(k0, g * gs); k < ke; k += kAmxBf16K) {
          if ((k & 127) == 0)  // the same row's next chunk, one line per 128 weights
            prefetch_to_l2(src + (k + k1 - k0) / 2);
          // 16 bytes = 32 weights; vpermw reads 5 index bits and the table repeats.
          const __m512i v = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k / 2))));
          const __m512i lo = _mm512_permutexvar_epi16(v, wtab);
          const __m512i hi = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), wtab);
          _mm512_storeu_si512(dst + k, _mm512_permutex2var_epi16(lo, widx, hi));
        }
      }
    });
  }
};

// Product tiles: 0 = (rows 0-15 of A, x block 0), 1 = (0-15, block 1), 2 = (16-31, 0),
// 3 = (16-31, 1); A tiles 4, 5; x tiles 6, 7.
template <int MT>
MYQ_TARGET_AMX void tiles_zero() {
  _tile_zero(0);
  _tile_zero(2);
  if constexpr (MT > 1) {
    _tile_zero(1);
    _tile_zero(3);
  }
}

// steps k-steps of 32: A rows at a (row stride lda elements), x blocks at xb, xb + xblock,
// each of the x planes at xb + p * plane (the products of all planes add up in the tiles).
template <int MT>
MYQ_TARGET_AMX void tiles_steps(const uint16_t* a, int64_t lda, const XPlanes& x, const uint16_t* xb,
                                int64_t xblock, int64_t steps) {
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a + s * kAmxBf16K, lda * 2);
    _tile_loadd(5, a + 16 * lda + s * kAmxBf16K, lda * 2);
    for (int p = 0; p < x.count; ++p) {
      const uint16_t* xs = xb + p * x.stride + s * kTileElems;
      _tile_loadd(6, xs, 64);
      if constexpr (MT > 1) _tile_loadd(7, xs + xblock, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (MT > 1) {
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
}

// c[(tn * MT + tm) * 256 + n * 16 + m]
template <int MT>
MYQ_TARGET_AMX void tiles_store(float* c) {
  _tile_stored(0, c, 64);
  _tile_stored(2, c + 256 * MT, 64);
  if constexpr (MT > 1) {
    _tile_stored(1, c + 256, 64);
    _tile_stored(3, c + 256 * 3, 64);
  }
}

// The two ways to multiply: run<MT>(a, lda, x, xb, xblock, steps, zero, store, c) adds the
// products of `steps` k-steps of 32 (A rows at a, x blocks at xb, xb + xblock) to the sums
// of the 32 rows of A x 16 MT rows of x (zero: start them at 0) and, with store, leaves
// them in c in the layout of tiles_store. AMX keeps the sums in the tile registers between
// calls; the AVX512-BF16 kernel keeps them in c and writes c on every call.
struct AmxTiles {
  static void begin() { amx_begin(); }
  static void end() { amx_end(); }
  template <int MT>
  static void run(const uint16_t* a, int64_t lda, const XPlanes& x, const uint16_t* xb,
                  int64_t xblock, int64_t steps, bool zero, bool store, float* c) {
    if (zero) tiles_zero<MT>();
    tiles_steps<MT>(a, lda, x, xb, xblock, steps);
    if (store) tiles_store<MT>(c);
  }
};

// Rows [r0, r0 + NR) of A (a points at row r0) against MT blocks of 16 rows of x, each in
// P planes, over `pairs` k-pairs: NR * MT * P accumulators, every broadcast pair of A
// meeting MT * P vectors of x. The planes sum at the end (P chains per sum, not one long one).
template <int MT, int P, int NR>
MYQ_TARGET_AVX512_BF16 void dots_rows(const uint16_t* a, int64_t lda, const uint16_t* xb,
                                      int64_t plane, int64_t xblock, int64_t pairs, bool zero,
                                      int r0, float* c) {
  __m512 acc[NR][MT][P];
  for (int r = 0; r < NR; ++r)
    for (int tm = 0; tm < MT; ++tm)
      for (int p = 0; p < P; ++p) acc[r][tm][p] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    __m512i xv[MT][P];
    for (int tm = 0; tm < MT; ++tm)
      for (int p = 0; p < P; ++p)
        xv[tm][p] = _mm512_loadu_si512(xb + p * plane + tm * xblock + kp * 2 * kAmxTile);
    for (int r = 0; r < NR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, sizeof(pair));
      const __m512i w = _mm512_set1_epi32(pair);
      for (int tm = 0; tm < MT; ++tm)
        for (int p = 0; p < P; ++p) acc[r][tm][p] = dpbf16(acc[r][tm][p], w, xv[tm][p]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int tm = 0; tm < MT; ++tm) {
      const int row = r0 + r;
      float* ct = c + ((row / kAmxTile) * MT + tm) * 256 + (row % kAmxTile) * kAmxTile;
      __m512 v = zero ? _mm512_setzero_ps() : _mm512_load_ps(ct);
      for (int p = 0; p < P; ++p) v = _mm512_add_ps(v, acc[r][tm][p]);
      _mm512_store_ps(ct, v);
    }
}

struct Avx512Dots {
  static void begin() {}
  static void end() {}
  // NR: 24 accumulators where MT * P allows (8 x 3, 4 x 6), else 16; 32 rows in whole groups.
  // Each group of rows runs over all `steps` at once, its x blocks coming from L2: passes of
  // 128 pairs that kept them in L1 ran 4-8% slower (4096^2, M = 128 / 512, bfloat16 x), the
  // cost of the accumulators' round trips through c and of the short loops.
  template <int MT, int P>
  static void run_planes(const uint16_t* a, int64_t lda, const XPlanes& x, const uint16_t* xb,
                         int64_t xblock, int64_t steps, bool zero, float* c) {
    constexpr int V = MT * P;
    constexpr int NR = V == 1 ? 16 : V <= 3 ? 8 : 4;
    const int64_t pairs = steps * kAmxBf16K / 2;
    for (int r0 = 0; r0 < kPair; r0 += NR)
      dots_rows<MT, P, NR>(a + r0 * lda, lda, xb, x.stride, xblock, pairs, zero, r0, c);
  }
  template <int MT>
  static void run(const uint16_t* a, int64_t lda, const XPlanes& x, const uint16_t* xb,
                  int64_t xblock, int64_t steps, bool zero, bool /*store: c is always written*/,
                  float* c) {
    switch (x.count) {
      case 1: run_planes<MT, 1>(a, lda, x, xb, xblock, steps, zero, c); break;
      case 2: run_planes<MT, 2>(a, lda, x, xb, xblock, steps, zero, c); break;
      default: run_planes<MT, 3>(a, lda, x, xb, xblock, steps, zero, c); break;
    }
  }
};

// y[row, col .. col + 15] = v in y's dtype, the lanes of `cols`.
MYQ_TARGET_AVX512 inline void store_y(const YRows& y, int64_t row, int64_t col, __mmask16 cols,
                                      __m512 v) {
  const int64_t at = row * y.ld + col;
  switch (y.type) {
    case YType::Float: _mm512_mask_storeu_ps(static_cast<float*>(y.data) + at, cols, v); break;
    case YType::BFloat16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y.data) + at, cols, bf16_round_bits(v));
      break;
    case YType::Half:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y.data) + at, cols,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
  }
}

// y[m, n] = c * scale[n] + bias[n] for the valid rows / columns of an n-pair x m-pair, a row
// of 16 columns at a time (a column of c's tile). The _round_ intrinsics are never contracted
// into an FMA, so y rounds as the reference's (c * scale) + bias.
MYQ_TARGET_AVX512 void epilogue(const float* c, int mt, int64_t n, int64_t m, int64_t mlim,
                                int64_t nlim, const float* scale, const float* bias,
                                const YRows& y) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int tn = 0; tn < 2; ++tn) {
    const int64_t col = n + tn * kAmxTile;
    if (col >= nlim) break;
    const __mmask16 cols = __mmask16((1u << std::min<int64_t>(kAmxTile, nlim - col)) - 1);
    const __m512 s = scale ? _mm512_maskz_loadu_ps(cols, scale + col) : _mm512_setzero_ps();
    const __m512 b = bias ? _mm512_maskz_loadu_ps(cols, bias + col) : _mm512_setzero_ps();
    for (int tm = 0; tm < mt; ++tm) {
      const float* ct = c + (tn * mt + tm) * 256;
      __m512i rows[kAmxTile];  // of the tile: weight rows -> rows of x
      for (int j = 0; j < kAmxTile; ++j) rows[j] = _mm512_load_si512(ct + j * kAmxTile);
      transpose_16x16(rows);
      for (int i = 0; i < kAmxTile; ++i) {
        const int64_t row = m + tm * kAmxTile + i;
        if (row >= mlim) break;
        __m512 v = _mm512_castsi512_ps(rows[i]);
        if (scale) v = _mm512_mul_round_ps(v, s, kRound);
        if (bias) v = _mm512_add_round_ps(v, b, kRound);
        store_y(y, row, col, cols, v);
      }
    }
  }
}

// K chunk of the streaming mode (<= 2 x 16 rows of x): A stays in L1.
constexpr int64_t kChunkK = 256;

// Group scales applied outside the tiles, for int4 weights with float32 / float16 x: the
// tiles sum one group's exact products of (q - zero) and x, which acc then adds up scaled
// in float32 (scales == nullptr: no groups, the tiles sum all of K).
struct GroupScales {
  const float* scales;  // [N, K / size]
  int64_t size;
};

// acc (+)= c * scales[n, g] row by row, for the tiles of c (layout of tiles_store).
MYQ_TARGET_AVX512 void add_scaled_group(const float* c, int mt, const GroupScales& gs, int64_t groups,
                                        int64_t g, int64_t n, int64_t N, bool init, float* acc) {
  for (int tn = 0; tn < 2; ++tn)
    for (int tm = 0; tm < mt; ++tm)
      for (int r = 0; r < kAmxTile; ++r) {
        const int64_t row = n + tn * kAmxTile + r;
        const __m512 scale = _mm512_set1_ps(row < N ? gs.scales[row * groups + g] : 0.f);
        const int64_t at = (tn * mt + tm) * 256 + r * kAmxTile;
        const __m512 v = _mm512_mul_ps(_mm512_load_ps(c + at), scale);
        _mm512_store_ps(acc + at, init ? v : _mm512_add_ps(_mm512_load_ps(acc + at), v));
      }
}

template <typename Product, typename Convert>
void run(const XPlanes& x, int64_t K, const Convert& convert, const GroupScales& groups,
         const float* scale, const float* bias, const YRows& y, int64_t M, int64_t N,
         int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x.data);
  const int64_t xblock = K * kAmxTile;  // bf16 elements of one packed 16-row block of x
  const int64_t mlim = std::min(m1, M), nlim = std::min(n1, N);
  alignas(64) float c[4 * 256];
  alignas(64) float acc[4 * 256];
  const float* out = groups.scales ? acc : c;
  // Tile products of K columns [kb, ke) (a: converted rows from column a_k0, xb: the x
  // block) for output rows n; the sum over K ends in `out`.
  auto product = [&](const uint16_t* a, int64_t lda, int64_t a_k0, const uint16_t* xb,
                     int64_t kb, int64_t ke, int mt, int64_t n) {
    const uint16_t* xs = xb + (kb / kAmxBf16K) * kTileElems;
    const uint16_t* as = a + (kb - a_k0);
    if (!groups.scales) {
      const int64_t steps = (ke - kb) / kAmxBf16K;
      if (mt == 2) Product::template run<2>(as, lda, x, xs, xblock, steps, kb == 0, ke == K, c);
      else Product::template run<1>(as, lda, x, xs, xblock, steps, kb == 0, ke == K, c);
      return;
    }
    // One run per group (or the part of it in [kb, ke)), its sum scaled into acc at its end.
    for (int64_t k = kb; k < ke;) {
      const int64_t group_end = std::min(ke, (k / groups.size + 1) * groups.size);
      const bool start = k % groups.size == 0, end = group_end % groups.size == 0;
      const int64_t s = (k - kb) / kAmxBf16K, steps = (group_end - k) / kAmxBf16K;
      const uint16_t* ak = as + s * kAmxBf16K;
      const uint16_t* xk = xs + s * kTileElems;
      if (mt == 2) Product::template run<2>(ak, lda, x, xk, xblock, steps, start, end, c);
      else Product::template run<1>(ak, lda, x, xk, xblock, steps, start, end, c);
      if (end)
        add_scaled_group(c, mt, groups, K / groups.size, k / groups.size, n, N, k < groups.size, acc);
      k = group_end;
    }
  };
  Product::begin();
  if (m1 - m0 <= kPair) {
    // One pass over x: convert and multiply K chunk by K chunk, the products staying in
    // the tile registers; the converted chunk (32 x 256 bf16) stays in L1.
    const int64_t lda = kChunkK + 32;  // + a cache line: tile rows spread over L1 sets
    uint16_t* a = amx_a_buffer<uint16_t>(kPair * lda);
    const int mt = m0 + kAmxTile < m1 ? 2 : 1;
    const uint16_t* xb = x16 + (m0 / kAmxTile) * xblock;
    for (int64_t n = n0; n < n1; n += kPair) {
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        const int64_t k1 = std::min(K, k0 + kChunkK);
        convert(n, k0, k1, a, lda);
        product(a, lda, k0, xb, k0, k1, mt, n);
      }
      epilogue(out, mt, n, m0, mlim, nlim, scale, bias, y);
    }
  } else {
    // Convert 32 full weight rows once (into L2), then sweep the rows of x over them.
    const int64_t lda = K + 32;
    uint16_t* a = amx_a_buffer<uint16_t>(kPair * lda);
    for (int64_t n = n0; n < n1; n += kPair) {
      convert(n, 0, K, a, lda);
      for (int64_t m = m0; m < m1; m += kPair) {
        const int mt = m + kAmxTile < m1 ? 2 : 1;
        product(a, lda, 0, x16 + (m / kAmxTile) * xblock, 0, K, mt, n);
        epilogue(out, mt, n, m, mlim, nlim, scale, bias, y);
      }
    }
  }
  Product::end();
}

// The bfloat16 planes of 16 floats (one per lane) as 32-bit lanes holding each plane's bits in
// their high half: plane 0 the high half of f, plane p the high half of f - (planes before),
// so the planes sum to f exactly (24 significant bits in 3 x 8). inf and NaN (kept NaN: its
// payload may sit in the low half only) stay in plane 0, the other planes 0 there.
template <int P>
MYQ_TARGET_AVX512 inline void split_planes(__m512 f, __m512i* planes) {
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(f), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  const __m512i bits = _mm512_mask_or_epi32(_mm512_castps_si512(f), nan, _mm512_castps_si512(f),
                                            _mm512_set1_epi32(0x00400000));
  planes[0] = _mm512_and_si512(bits, high);
  __m512 rest = _mm512_maskz_sub_ps(finite, f, _mm512_castsi512_ps(planes[0]));
  for (int p = 1; p < P; ++p) {
    planes[p] = _mm512_and_si512(_mm512_castps_si512(rest), high);
    rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(planes[p]));
  }
}

template <typename T, int P>
MYQ_TARGET_AVX512 void pack_planes(const T* x, int64_t K, int64_t rows_total, uint16_t* dst,
                                   int64_t plane_stride, int64_t b0, int64_t b1) {
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const __m512i rows = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32(static_cast<int32_t>(K * sizeof(T))));
  const int64_t pairs = K / 2;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t valid = std::min<int64_t>(kAmxTile, std::max<int64_t>(0, rows_total - b * kAmxTile));
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);  // rows past the end: 0
    const char* block = reinterpret_cast<const char*>(x + b * kAmxTile * K);
    for (int64_t g = 0; g < pairs; ++g) {
      __m512 even, odd;  // x[r, 2g], x[r, 2g + 1] for the 16 rows r
      if constexpr (std::is_same_v<T, float>) {
        even = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, rows, block + 8 * g, 1);
        odd = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, rows, block + 8 * g + 4, 1);
      } else {
        const __m512i both =
            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, rows, block + 4 * g, 1);
        even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(both));
        odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(both, 16)));
      }
      __m512i pe[P], po[P];
      split_planes<P>(even, pe);
      split_planes<P>(odd, po);
      for (int p = 0; p < P; ++p) {
        const __m512i pair = _mm512_or_si512(_mm512_and_si512(po[p], high), _mm512_srli_epi32(pe[p], 16));
        _mm512_storeu_si512(dst + p * plane_stride + (b * pairs + g) * 2 * kAmxTile, pair);
      }
    }
  }
}

}  // namespace

template <typename T>
void pack_x_planes(const T* x, int64_t K, int64_t rows_total, c10::BFloat16* dst,
                   int64_t plane_stride, int64_t b0, int64_t b1) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  if constexpr (std::is_same_v<T, float>) pack_planes<T, 3>(x, K, rows_total, d, plane_stride, b0, b1);
  else pack_planes<T, 2>(x, K, rows_total, d, plane_stride, b0, b1);
}
template void pack_x_planes<float>(const float*, int64_t, int64_t, c10::BFloat16*, int64_t,
                                   int64_t, int64_t);
template void pack_x_planes<c10::Half>(const c10::Half*, int64_t, int64_t, c10::BFloat16*,
                                       int64_t, int64_t, int64_t);

void int8_linear_bf16(Isa isa, const XPlanes& x, int64_t K, const int8_t* w, const float* scale,
                      const float* bias, const YRows& y, int64_t M, int64_t N, int64_t m0,
                      int64_t m1, int64_t n0, int64_t n1) {
  const Int8Rows rows{w, K, N};
  const GroupScales none{nullptr, 0};
  if (isa == Isa::Avx512Amx)
    run<AmxTiles>(x, K, rows, none, scale, bias, y, M, N, m0, m1, n0, n1);
  else
    run<Avx512Dots>(x, K, rows, none, scale, bias, y, M, N, m0, m1, n0, n1);
}

void int4_linear_bf16(Isa isa, const XPlanes& x, int64_t K, const uint8_t* packed,
                      const float* scales, const float* zeros, int64_t group_size,
                      const float* bias, const YRows& y, int64_t M, int64_t N, int64_t m0,
                      int64_t m1, int64_t n0, int64_t n1) {
  // bfloat16 x (one plane) meets bf16-rounded weights, as int4_dequant gives a bf16 GEMM;
  // float x keeps float32 accuracy: exact (q - zero) tiles, group scales applied in float32.
  const bool one_plane = x.count == 1;
  const Int4Rows rows{packed, one_plane ? scales : nullptr, zeros, group_size, K, N};
  const GroupScales groups = one_plane ? GroupScales{nullptr, 0} : GroupScales{scales, group_size};
  if (isa == Isa::Avx512Amx)
    run<AmxTiles>(x, K, rows, groups, nullptr, bias, y, M, N, m0, m1, n0, n1);
  else
    run<Avx512Dots>(x, K, rows, groups, nullptr, bias, y, M, N, m0, m1, n0, n1);
}

}  // namespace myq
