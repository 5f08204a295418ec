// ATen binding of the CPU kernels: argument checks, dtype conversion, output allocation
// and the split of the work over threads (at::parallel_for, i.e. OpenMP, which follows
// torch.set_num_threads). The arithmetic lives in the kernel files (see kernels.h).
//
// Strategy per op, by the number of activation rows M = x.numel() / K:
//   int8_linear, int4_linear  M <= gemv_max_m (32; 64-128 on AVX2; int4 with float32 x on
//                             AVX-512: every M): stream the weights (gemv kernels), threads
//                             split the output columns N. int4 on AVX-512 VNNI, M = 1, from
//                             2^21 weights: x as int8 digits (int4_gemv_digits);
//                             with bfloat16 x on AVX512-BF16, M <= 2: its own vdpbf16ps GEMV;
//                             int8 with bfloat16 x there from M = 4 likewise (int8_gemv_bf16).
//                             Larger M: dequantize the weights into float32 (int4 only:
//                             bfloat16 when x is bfloat16 and the CPU has bfloat16 hardware,
//                             see bf16_tiles) for MKL / oneDNN (tiled_mm): whole, in one
//                             threaded product, up to 4 MiB; else kTileN-row tiles per thread.
//   on AMX, K % 32 == 0       M >= kAmxMinM: AMX-BF16 tiles, weights converted to bf16 per
//                             thread 32 rows at a time (bf16_linear.cpp); float32 /
//                             float16 x as 3 / 2 bf16 planes, still float32-accurate.
//   AVX512-BF16 without AMX   the same product on vdpbf16ps beyond the gemv: bfloat16 x (int8
//                             and int4, from M = 13), float16 x (int4, from M = 33); the
//                             digits below come first.
//   int8_linear on AMX,       before all of the above: x split into 3-4 int8 digits per row
//   K % 64 == 0, N >= 16      (x_digits.cpp) and multiplied on AMX-INT8 like W8A8, so the
//                             weights are never widened (bfloat16 x: M <= 32 only); on
//                             AVX-512 VNNI without AMX the same from M = 33 and K = 512, on
//                             VNNI product tiles (K % 4 == 0, N >= 16) or the dot kernel.
//   int4_linear on AMX,       likewise from M = 5 with float32 x (float16 x: M = 5..32) and
//   group_size % 64 == 0      integer zero points, on exact int8 q - zero tiles
//                             (int4_linear_amx.cpp).
//   int8_linear_dynamic       quantize x once, then the int8 product (int8_product): AMX
//                             tiles (avx512_amx, M >= kAmxMinM, K % 64 == 0), VNNI tiles
//                             (M > kSmallM, K % 4 == 0, N >= 16), else the VNNI / AVX2 /
//                             scalar dot kernel (threads split N when M <= kSmallM);
//                             VNNI without AMX, M > kSmallM, K < 2048: at::_int_mm;
//                             on AVX2 with M > kSmallM and K <= 1040, MKL on the int8 values
//                             as float32, exact (w8a8_float_gemm).
#include <torch/extension.h>

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "amx.h"
#include "isa.h"
#include "kernels.h"

namespace myq {
namespace {

// Activation rows up to which the W8A16 / W4A16 ops stream weights (gemv) instead of
// dequantizing tiles for a GEMM: float32 tiles (MKL sgemm) and bfloat16 tiles (bfloat16 x
// on bfloat16 hardware: oneDNN, AMX where present). Also the W8A8 VNNI kernel's
// switch from splitting N to a 2-D (M, N) task grid.
constexpr int64_t kSmallM = 32;
// bfloat16 x on bfloat16 hardware: the gemv up to here, then bfloat16 tiles (int4) or our
// vdpbf16ps kernel (int8 and int4, K % 32 == 0). The kernel always multiplies 16 rows of x,
// so below 13 rows the gemv wins. Zen 4, 4096^2, cold, vdpbf16ps / gemv time, in turns:
// int8 M = 12 / 13 / 32: 1.07 / 0.88 / 0.65; int4 g128 1.09 / 0.82 / 0.62 (Zen 5, int4: the
// crossover at 12-16 rows). With int4 weights the gemv is the vdpbf16ps one (int4_gemv_bf16,
// passes of 4 rows of x); Zen 4, 4096^2 g128, cold, float32 / bfloat16 gemv time, in turns:
// M = 1 1.18x, 2 1.09x, 3 1.14x, 4 1.20x, 8 1.16x, 12 1.23x. Past 12 that gemv against the
// vdpbf16ps GEMM, GEMM / gemv time, cold (hot): M = 13 1.11x (1.08x), 14 1.07x (0.97x),
// 15 1.02x, 16 0.96x (0.91x); too little to give int4 a switch of its own.
constexpr int64_t kSmallMBFloat16 = 12;
// float32 x with int4 weights stays on the AVX-512 gemv at every M (where no AMX path comes
// first): its float32 FMAs run near the FMA peak, ahead of the other ways to multiply. Zen 5,
// 4096^2 g128, hot, ms, gemv / three bfloat16 planes on AVX512-BF16 (bf16_linear.cpp):
// M = 32 3.3 / 5.1, M = 128 14.5 / 16.6, M = 512 52 / 68; MKL's float32 tiles at M = 512: 104.
constexpr int64_t kGemvAnyM = std::numeric_limits<int64_t>::max();
// bfloat16 x with int8 weights on AVX512-BF16: the gemv in vdpbf16ps (int8_gemv_bf16) from here
// up to the vdpbf16ps GEMM (kSmallMBFloat16); below, the float32 gemv (one row: its row-by-row
// kernel). Zen 4, cold, float32 / bfloat16 gemv time, in turns: 4096^2 M = 1 0.75x, 2 1.02-1.06x,
// 3 0.98x, 4 1.16x, 8 1.16x, 12 1.17x; 11008x4096 M = 2 / 4 / 8 1.02 / 1.07 / 1.14x;
// 1536x576 0.98 / 1.01 / 1.09x.
constexpr int64_t kInt8Bf16GemvMinM = 4;
constexpr int64_t kGemvRowChunk = 256;

// bfloat16 x meets bfloat16 weight tiles (int4 only: see int8_dequant) in the large-M path
// only where torch's bfloat16 GEMM is fast (AVX512-BF16 / AMX in oneDNN). Elsewhere torch
// multiplies bfloat16 in scalar code: on an AVX2-only Zen 3, 13 GFLOP/s against 111 for
// float32, so x goes to float32 tiles there.
bool bf16_tiles(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 && cpu_has_bf16_gemm();
}

// AVX2 (Zen 3, float32 tiles): MKL's single-threaded sgemm on a 256-row tile runs at 37-56
// GFLOP/s for 33..128 rows of x, about what the gemv reaches, so the gemv holds out longer
// there. Cold, float32 x, ms, gemv / tiles, alternating processes:
//   int8 4096^2 M=64 19-20 / 21-25, M=128 33-35 / 42-47, M=256 72-78 / 74-76;
//   int8 11008x4096 M=128 95-125 / 117-171, M=192 130-184 / 152-236;
//   int4 4096^2 M=64 31 / 36-42, M=96 42-45 / 46-51, M=128 59-60 / 53;
//   int8 1536x576 (one whole product) M=64 1.35-1.41 / 1.30-2.01, M=96 1.95-2.08 / 1.74-2.76.
constexpr int64_t kSmallMAvx2 = 64;
constexpr int64_t kSmallMAvx2Int8Tiles = 128;  // int8 weights too big to be made whole
// Tile of the large-M path: output columns per dequantized tile, and rows of x per mm.
constexpr int64_t kTileN = 256;
constexpr int64_t kTileM = 256;
// Rows of bfloat16 x per task of the bfloat16 kernel (bf16_grid): each task converts its
// weight rows once, so 256-row tasks converted every weight row twice at M = 512. Zen 4,
// 4096^2 cold, 256 / 512 rows time in turns: int8 M = 384 1.03x, 512 1.01-1.04x, 1024 1.00x,
// 2048 1.00x; int4 g128 M = 512 1.03-1.07x, 1024 1.12x, 2048 1.00x. (Planes of float x keep
// kTileM: 3 planes of 512 rows would fill 12 MB of L3.) The tasks go row block by row block:
// column blocks outermost, each task swept all of x, which from M = 2048 (16 MB packed, with
// a 32 MB y) fell out of L3, while a weight read once per row block costs little. Zen 4,
// 4096^2, bfloat16 x, column / row blocks outermost, time in turns: int8 M = 1024 1.03x,
// 2048 1.03-1.12x cold, 1.06x hot; int4 g128 M = 1024 1.00x, 2048 1.04x. (For the int8
// products' 32-row tasks it lost: W8A16 float32 x M = 512 0.97x, weights read 16 times.)
constexpr int64_t kTileMBFloat16 = 512;
// int8 products (W8A8, W8A16 digits): task sizes of the (M, N) grid, M in blocks of 32 q rows.
constexpr int64_t kDynTileN = 64;
constexpr int64_t kDynTileMBlocks = 4;
// The product tiles' tasks go in bands of rows of x whose int8 form fills this much, each
// band's column blocks one after another: in one band, every column block read all of x's
// digits (32 MB for 2048 float32 rows), out of L3. Zen 4, 4096^2, one band / bands of 4 MB,
// time in turns: W8A16 float32 x M = 512 1.07-1.15x cold (1.00x hot), 2048 1.05x cold (1.06x
// hot); W8A8 M = 2048 1.02x (its 2048 rows of q are 8 MB).
constexpr int64_t kProductBandBytes = int64_t(4) << 20;
// AMX (int8 for W8A8, bf16 for W8A16 / W4A16 with bfloat16 x): rows of x from which the
// AMX tiles beat the AVX-512 kernels; output columns per AMX task.
constexpr int64_t kAmxMinM = 5;
constexpr int64_t kAmxMinMInt4 = 8;  // the int4 AVX-512 gemv holds out longer
constexpr int64_t kAmxMinMInt4Float = 12;  // float x: 2-3 planes and per-group scaling
constexpr int64_t kAmxTileN = 64;
// W8A16 as int8 digits of x on AMX-INT8 (x_digits.cpp): exact int32 sums need K < 2^17.
// Measured against the AMX-BF16 path (4096 x 4096, cold weights): 1.2-1.8x faster for M <= 32
// with any x, 1.3-2x for every M with float32 / float16 x; slower from M = 64 with bfloat16 x
// (3 int8 digit products cost more than one bf16 product there). Without AMX the VNNI
// kernel takes 3-4 dot products per row of x: behind the float GEMV up to M = 32 (4096^2
// hot, Zen 5: M = 32 3.1 ms against 3.4 at M = 33), ahead of MKL's float32 GEMM beyond
// (M = 128 / 512: 13-15 / 53-55 ms against 27-31 / 95-97). bfloat16 x takes it only where
// there is no AVX512-BF16 (torch's bfloat16 GEMM rounds its product to bfloat16 and the
// scale after it rounds again, up to 2^-7 of |x| @ |W|^T against the 2^-8 of one rounding);
// with it, our vdpbf16ps kernel (exact products, float32 sums): Zen 5, 4096^2 hot, M = 128:
// 6.0 ms against 12.7 for the digits and 6.5 for F.linear bf16.
constexpr int64_t kDigitsMaxK = (int64_t(1) << 17) - 1;
// Without AMX the VNNI kernels' work per output weighs on short rows: below this K and beyond
// kSmallM rows, W8A8 takes torch's int8 GEMM (at::_int_mm), then our epilogue.
// W8A8, Zen 4, hot, _int_mm / VNNI time in turns, M = 33 / 128 / 512: 1536x576 0.90 / 0.70 /
// 0.72, 576x1536 1.08 / 0.82 / 0.73, 3072x768 0.90 / 0.76 / 0.77, 768x3072 1.25 / 0.80 / 0.93,
// 4096^2 2.07 / 1.16 / 1.03, 11008x4096 1.98 / 1.06 / 0.83 (2026-12-04, M = 128 / 512 with
// the product tiles: 1536x576 0.92 / 0.87, 576x1536 0.99 / 0.94, 3072x768 0.96 / 0.91).
constexpr int64_t kVnniMinK = 2048;
// int8_linear's float x: its digits on the VNNI product tiles from this K, beyond kSmallM rows;
// below, MKL's tiles. (An earlier measurement had the digits losing below K = 2048, e.g.
// 1536x576 M = 128 / 512 at 0.43-0.63x / 0.52-0.57x F.linear fp32, against 0.83-0.98x for MKL's
// tiles; they run on the product tiles, whose outputs need no horizontal sums.) The bf16
// planes (vdpbf16ps, 3 per float) ran 0.63-1.11x of MKL's tiles.
// Zen 4, in turns, MKL's tiles / digits time, float32 x hot (cold), M = 64 / 128 / 256 / 512 / 2048:
// 1536x576 2.85 (1.40) / 1.20 / 1.06 (1.28) / 1.05 / 0.92x; 576x1536 1.38 (1.55) / 2.01 /
// 1.35 (1.48) / 1.04 / 1.12x; 3072x768 1.21 / 1.16 / 1.08 / 1.07x; 1024x512 M = 33 / 128 /
// 512 / 2048 1.84 / 1.88 / 1.04 / 1.03x; float16 x M = 64 / 256 / 512: 1536x576 1.68 / 1.55 /
// 1.29x, 576x1536 3.05 / 1.62 / 1.25x. Below 512 MKL wins at M = 512: K = 384 / 256 / 128
// 0.96 / 0.85 / 0.62x. (MKL's tiles ran 1.2-2.9x slower than F.linear in some turns at M <= 128.)
constexpr int64_t kDigitsMinK = 512;
// ... but MKL's GEMM runs smaller weights well (576x576 at 83% of the FMA peak) and beats the
// digits on them beyond 128 rows: digits / MKL time, M = 64 / 256 / 512: 576x576 0.89 /
// 1.15-1.20 / 1.23x, 192x576 M = 256 1.32x, 1024x576 0.86 / 1.23 / 1.18x, 512x1024 0.73 / 1.10
// / 1.06x, 768x768 0.85 / 0.82 / 1.24x, 768x576 0.53 / 0.80 / 1.13x; 1536x576 and 576x1536
// (884736 weights) as above.
constexpr int64_t kDigitsShortRowsMaxM = 128;
constexpr int64_t kDigitsShortRowsMinWeights = 3 << 18;
constexpr int64_t kDigitsMaxMBFloat16 = 32;
constexpr int64_t kInt4DigitsMinM = 5;
constexpr int64_t kInt4DigitsMaxMFloat16 = 32;
// Column blocks handed to threads in the gemv paths (a multiple of the kernels' 4 rows).
constexpr int64_t kColBlock = 16;
// Below this many multiply-adds per thread, run on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 16;

// ---------------------------------------------------------------- checks
bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "myq::", op, ": ", name, " must be a CPU tensor, got ",
              t.device());
}

void check_x(const at::Tensor& x, const char* op) {
  check_cpu(x, op, "x");
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "myq::", op,
              ": x must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "myq::", op, ": x must have at least one dimension [..., K]");
}

// A float scale / zero-point / bias tensor of the given shape ([N], or [N, K / group_size])
// as contiguous float32, the kernels' one input type (undefined when absent).
at::Tensor float_param(const std::optional<at::Tensor>& t, at::IntArrayRef shape, const char* op,
                       const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cpu(*t, op, name);
  TORCH_CHECK(is_float_dtype(t->scalar_type()), "myq::", op, ": ", name,
              " must be float32, bfloat16 or float16, got ", t->scalar_type());
  TORCH_CHECK(t->sizes() == shape, "myq::", op, ": ", name, " must have shape ", shape, ", got ",
              t->sizes());
  return t->to(at::kFloat).contiguous();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

// x's rows: all its dimensions but the last.
int64_t x_rows(const at::Tensor& x) {
  return c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
}

// The [M, N] result the kernels write: float32, or x's dtype for the bfloat16 kernels, whose
// epilogue rounds to it, where a float32 y took a second pass (torch's conversion) and twice
// the stores. Zen 4, bfloat16 x, time with a float32 y / in x's dtype, in turns, int8 (int4
// g64) M = 128 / 512: 1536 x 576 1.25 / 1.08x (1.19 / 1.15x), 576 x 1536 1.08 / 1.01x (1.07 /
// 1.06x), 4096^2 1.01 / 1.04x (1.01 / 1.01x).
at::Tensor kernel_result(const at::Tensor& x, int64_t n, bool in_x_dtype = false) {
  return at::empty({x_rows(x), n}, in_x_dtype ? x.options() : x.options().dtype(at::kFloat));
}

// y [M, N] as the bfloat16 kernels' YRows.
YRows y_rows(at::Tensor& y) {
  const YType type = y.scalar_type() == at::kBFloat16 ? YType::BFloat16
                     : y.scalar_type() == at::kHalf   ? YType::Half
                                                      : YType::Float;
  return {y.mutable_data_ptr(), y.size(1), type};
}

// y [M, N] -> x's dtype, shape [..., N].
at::Tensor finish(const at::Tensor& y, const at::Tensor& x, int64_t n) {
  at::Tensor out = x.scalar_type() == y.scalar_type() ? y : y.to(x.scalar_type());
  return out.view(out_shape(x, n));
}

// fn(p) with p x's data as const float*, c10::BFloat16* or c10::Half*: kernels that read x in
// its own dtype (a float32 copy of x costs more than the read, see simd.h's load_x16).
template <typename Fn>
void with_x_data(const at::Tensor& x, const Fn& fn) {
  switch (x.scalar_type()) {
    case at::kFloat: fn(x.const_data_ptr<float>()); break;
    case at::kBFloat16: fn(x.const_data_ptr<c10::BFloat16>()); break;
    default: fn(x.const_data_ptr<c10::Half>()); break;
  }
}

// ---------------------------------------------------------------- scratch
// A per-thread buffer kept across calls: a fresh multi-MB allocation per call costs page
// faults on every use (the 2 x 32 MB of a 2048 x 4096 float32 x's digits and their B-tile
// packing: ~20 ms per call). Freed when a request exceeds kScratchKeepBytes. Each slot is
// its own buffer: kTileSlot in the worker threads, the others in the calling thread.
constexpr size_t kScratchKeepBytes = size_t(64) << 20;
enum ScratchSlot { kTileSlot, kQSlot, kPackedQSlot, kWeightSlot };

template <typename T, ScratchSlot kSlot = kTileSlot>
T* scratch(int64_t count) {
  struct Buffer {
    void* ptr = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(ptr); }
  };
  thread_local Buffer buf;
  const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
  if (bytes > buf.size || (buf.size > kScratchKeepBytes && bytes < buf.size / 2)) {
    std::free(buf.ptr);
    buf.ptr = std::aligned_alloc(64, std::max<size_t>(bytes, 64));
    TORCH_CHECK(buf.ptr != nullptr, "myq: out of memory allocating a ", bytes, "-byte tile");
    buf.size = bytes;
  }
  return static_cast<T*>(buf.ptr);
}

// ---------------------------------------------------------------- threading helpers
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// fn(n0, n1) over blocks of output columns; `work_per_col` multiply-adds per column.
template <typename Fn>
void parallel_cols(int64_t N, int64_t work_per_col, const Fn& fn) {
  const int64_t blocks = (N + kColBlock - 1) / kColBlock;
  const int64_t work_per_block = std::max<int64_t>(1, work_per_col * kColBlock);
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / work_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    fn(b0 * kColBlock, std::min(N, b1 * kColBlock));
  });
}

// fn(m0, m1, n0, n1) over the (tile_m rows x tile_n columns) blocks of an [M, N] output, as
// tasks spread over the threads, band by band of `band_blocks` row blocks (0: one band),
// column blocks outermost within a band: consecutive tasks share weights while the band's
// rows of x stay in cache.
template <typename Fn>
void parallel_tiles(int64_t M, int64_t N, int64_t tile_m, int64_t tile_n, const Fn& fn,
                    int64_t band_blocks = 0) {
  const int64_t nblocks = (N + tile_n - 1) / tile_n;
  const int64_t mblocks = (M + tile_m - 1) / tile_m;
  const int64_t per_band = band_blocks > 0 ? std::min(band_blocks, mblocks) : mblocks;
  at::parallel_for(0, nblocks * mblocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t band = t / (nblocks * per_band), first = band * per_band;
      const int64_t in_band = std::min(per_band, mblocks - first);  // the last may be short
      const int64_t task = t - band * nblocks * per_band;
      const int64_t n0 = task / in_band * tile_n, m0 = (first + task % in_band) * tile_m;
      fn(m0, std::min(M, m0 + tile_m), n0, std::min(N, n0 + tile_n));
    }
  });
}

// Dequantized weights up to this size are made whole, once per call, and multiplied in one
// threaded at::mm like F.linear (small layers: both cores on every product, no per-tile
// packing); larger ones in per-thread tiles, so a call never holds a float copy of a big weight.
constexpr int64_t kWholeWeightBytes = int64_t(4) << 20;

// Rows of x up to which int8_linear / int4_linear stream the weights (gemv).
int64_t gemv_max_m(Isa vec, const at::Tensor& x, int64_t N, int64_t K, bool int4) {
  if (int4 && bf16_tiles(x)) return kSmallMBFloat16;
  if (vec != Isa::Avx2) return int4 && x.scalar_type() == at::kFloat ? kGemvAnyM : kSmallM;
  const bool whole = N * K * static_cast<int64_t>(sizeof(float)) <= kWholeWeightBytes;
  return int4 || whole ? kSmallMAvx2 : kSmallMAvx2Int8Tiles;
}

// y[m, n] = ((acc[m, n] * rowscale[m]) * colscale[n]) + bias[n] (any of the three may be
// null), acc [M, N] row-major; acc may be y.
template <typename T>
void scale_rows(const T* acc, int64_t M, int64_t N, const float* rowscale, const float* colscale,
                const float* bias, float* y) {
  at::parallel_for(0, M, std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, N)),
                   [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float v = static_cast<float>(acc[m * N + n]);
        if (rowscale) v = v * rowscale[m];
        if (colscale) v = v * colscale[n];
        if (bias) v = v + bias[n];
        y[m * N + n] = v;
      }
  });
}

// Large-M path: y = (x @ W.T) * colscale + bias with W's rows from dequant(n0, n1, rows) in x's
// compute dtype (float32, or bfloat16 on bfloat16 hardware); x [M, K] contiguous in that dtype.
// Small weights: W whole, one at::mm. Else per task y[:, n0:n1] from tile = dequant(n0, n1) and
// xt = x transposed, [K, M]: MKL / oneDNN run tile @ xt (an "NN" product) markedly faster than
// x @ tile.T for float32, so the per-task product is acc[nl, ml] = tile @ xt[:, m0:m1].
// Its own task loop rather than parallel_tiles: a thread keeps its dequantized tile while
// its consecutive tasks stay in one column block.
template <typename T, typename Dequant>
void tiled_mm(const at::Tensor& x, int64_t N, const Dequant& dequant, const float* colscale,
              const float* bias, float* y) {
  const int64_t M = x.size(0), K = x.size(1);
  if (N * K * static_cast<int64_t>(sizeof(T)) <= kWholeWeightBytes) {
    T* w = scratch<T, kWeightSlot>(N * K);
    // float32 weights take the column scale (one rounding, as fine as scaling the sums), so the
    // product lands in y directly; bfloat16 ones keep it for the float32 epilogue.
    constexpr bool kFold = std::is_same_v<T, float>;
    parallel_cols(N, K, [&](int64_t n0, int64_t n1) {
      dequant(n0, n1, w + n0 * K);
      if (kFold && colscale)
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t k = 0; k < K; ++k) w[n * K + k] = w[n * K + k] * colscale[n];
    });
    // at::cpu:: calls the CPU kernels directly (x may require grad: no autograd here), and
    // outside a parallel region they run on every thread.
    const at::Tensor wt = at::from_blob(w, {N, K}, x.options()).t();
    if constexpr (kFold) {
      at::Tensor out = at::from_blob(y, {M, N}, x.options());
      if (bias) at::cpu::addmm_out(out, at::from_blob(const_cast<float*>(bias), {N}, x.options()), x, wt);
      else at::cpu::mm_out(out, x, wt);
    } else {
      const at::Tensor acc = at::cpu::mm(x, wt);
      TORCH_INTERNAL_ASSERT(acc.is_contiguous());
      scale_rows(acc.const_data_ptr<T>(), M, N, /*rowscale=*/nullptr, colscale, bias, y);
    }
    return;
  }
  const at::Tensor xt = x.t().contiguous();
  // Columns per tile: at most kTileN, and the same whole number of tiles for every thread, so
  // that no core idles (N = 576 in 256-column tiles gave 3 tasks for 2 threads).
  const int64_t threads = at::get_num_threads();
  const int64_t tiles = threads * ceil_div(N, threads * kTileN);
  const int64_t tile_n = ceil_div(ceil_div(N, tiles), 16) * 16;
  const int64_t nblocks = ceil_div(N, tile_n);
  const int64_t mblocks = ceil_div(M, kTileM);
  at::parallel_for(0, nblocks * mblocks, 1, [&](int64_t t0, int64_t t1) {
    // at::cpu::mm calls the CPU kernel directly: no dispatcher, autograd or Python
    // modes in the worker threads; nested in this parallel region it runs on one thread.
    T* tile = scratch<T>(tile_n * K);
    int64_t have = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb = t / mblocks, mb = t % mblocks;
      const int64_t n0 = nb * tile_n, n1 = std::min(N, n0 + tile_n);
      const int64_t m0 = mb * kTileM, m1 = std::min(M, m0 + kTileM);
      if (nb != have) {
        dequant(n0, n1, tile);
        have = nb;
      }
      const int64_t nl = n1 - n0, ml = m1 - m0;
      const at::Tensor tile_t = at::from_blob(tile, {nl, K}, xt.options());
      at::Tensor acc = at::cpu::mm(tile_t, xt.narrow(1, m0, ml));
      TORCH_INTERNAL_ASSERT(acc.is_contiguous());
      const T* a = acc.const_data_ptr<T>();
      // acc is [nl, ml]: write y's rows contiguously, 16 columns of acc at a time.
      for (int64_t jb = 0; jb < nl; jb += 16) {
        const int64_t je = std::min(nl, jb + 16);
        for (int64_t i = 0; i < ml; ++i) {
          float* yr = y + (m0 + i) * N + n0;
          for (int64_t j = jb; j < je; ++j) {
            float v = static_cast<float>(a[j * ml + i]);
            if (colscale) v = v * colscale[n0 + j];
            if (bias) v = v + bias[n0 + j];
            yr[j] = v;
          }
        }
      }
    }
  });
}

// The bfloat16 kernels' set-up: packs the planes of x into B tiles, then fn(planes, m0, m1, n0,
// n1) over a grid of (kAmxRowPair columns, kTileMBFloat16 or kTileM rows) tasks: one task per
// block of weight rows the kernel converts, so that small N still splits evenly (Zen 4, 576 x
// 1536 bfloat16 x, M = 128 / 512: 9 tasks of 64 columns for 2 threads, 32 / 64 columns
// 1.06-1.10x faster in turns; 4096^2 and 1536 x 576 0.98-1.01x).
template <typename Fn>
void bf16_grid(const at::Tensor& x2, int64_t N, const Fn& fn) {
  const int64_t M = x2.size(0), K = x2.size(1);
  const at::Tensor xc = x2.contiguous();
  const int count = x2.scalar_type() == at::kBFloat16 ? 1 : x2.scalar_type() == at::kHalf ? 2 : 3;
  const int64_t mtiles = (M + kAmxTile - 1) / kAmxTile;
  at::Tensor xp = at::empty({count, mtiles * kAmxTile, K}, x2.options().dtype(at::kBFloat16));
  const int64_t plane_stride = mtiles * kAmxTile * K;
  c10::BFloat16* packed = xp.mutable_data_ptr<c10::BFloat16>();
  at::parallel_for(0, mtiles, 1, [&](int64_t b0, int64_t b1) {
    switch (xc.scalar_type()) {
      case at::kBFloat16: amx_pack_rows(xc.const_data_ptr(), 2 * K, 2 * K, M, packed, b0, b1); break;
      case at::kHalf:
        pack_x_planes(xc.const_data_ptr<c10::Half>(), K, M, packed, plane_stride, b0, b1);
        break;
      default: pack_x_planes(xc.const_data_ptr<float>(), K, M, packed, plane_stride, b0, b1); break;
    }
  });
  const XPlanes x{packed, plane_stride, count};
  const int64_t tile_m = count == 1 ? kTileMBFloat16 : kTileM;
  parallel_tiles(M, N, tile_m, kAmxRowPair, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    fn(x, m0, m1, n0, n1);
  }, /*band_blocks=*/1);
}

// The checks of both int8 ops: x float [..., K], weight int8 [N, K], scale and bias float
// [N]. Returns scale and bias as contiguous float32 (bias undefined when absent).
std::pair<at::Tensor, at::Tensor> check_int8_args(const at::Tensor& x, const at::Tensor& weight,
                                                  const at::Tensor& scale,
                                                  const std::optional<at::Tensor>& bias,
                                                  const char* op) {
  check_x(x, op);
  check_cpu(weight, op, "weight");
  TORCH_CHECK(weight.scalar_type() == at::kChar, "myq::", op, ": weight must be int8, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2, "myq::", op, ": weight must be 2-D [N, K], got ",
              weight.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "myq::", op, ": x.shape[-1] (", x.size(-1),
              ") must equal weight.shape[1] (K=", weight.size(1), ")");
  const int64_t N = weight.size(0);
  return {float_param(scale, {N}, op, "scale"), float_param(bias, {N}, op, "bias")};
}

// The bfloat16 dot-product kernels (bf16_linear.cpp) for M rows of x: AMX-BF16 from amx_min_m
// rows, any float x (float32 / float16 x split into bfloat16 planes keeps float32 accuracy:
// int8 weights are exact in bfloat16, int4 then takes exact q - zero with the group scales in
// float32); AVX512-BF16 (avx512_vnni on a CPU that has it) where the op asks for it (dots).
bool use_bf16_kernel(Isa isa, int64_t K, int64_t M, int64_t amx_min_m, bool dots) {
  if (K % kAmxBf16K != 0) return false;
  if (isa == Isa::Avx512Amx) return M >= amx_min_m;
  return isa == Isa::Avx512Vnni && cpu_has_bf16_gemm() && dots;
}

// x's int8 form (q rows of QuantX) re-laid out as AMX B tiles: amx_pack_rows over whole
// 16-row blocks, into the calling thread's scratch (valid until its next call).
const int8_t* amx_pack_q(const QuantX& xq, int64_t M, int64_t K) {
  const int64_t rows = q_rows(xq.digits, M);
  const int64_t blocks = (rows + kAmxTile - 1) / kAmxTile;
  int8_t* dst = scratch<int8_t, kPackedQSlot>(blocks * kAmxTile * K);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    amx_pack_rows(xq.q, K, xq.ldq, rows, dst, b0, b1);
  });
  return dst;
}

// Output tasks of the int8 products on AMX: rows of x in whole blocks of 32 q rows.
int64_t amx_task_rows(const QuantX& xq) { return kDynTileMBlocks * x_rows_per_block(xq.digits); }

// y = the int8 product of weight w with x's int8 form (QuantX: W8A8 quantized rows or W8A16
// digits), over M rows of x: AMX tiles from amx_min_m rows of x (avx512_amx, K % 64 == 0) or
// VNNI tiles beyond kSmallM (K % 4 == 0), else the VNNI / AVX2 / scalar dot kernel, threads
// splitting N when M <= kSmallM. VNNI tiles against the dot kernel, 4096^2 hot, in turns:
// W8A8 M = 512 / 2048 1.22 / 1.32x, W8A16 float32 x M = 512 1.12x.
void int8_product(Isa isa, const QuantX& xq, int64_t M, int64_t K, int64_t N, int64_t amx_min_m,
                  const int8_t* w, const float* scale, const float* bias, float* y) {
  const Isa vec = vector_isa(isa);
  const bool amx_tiles = isa == Isa::Avx512Amx && M >= amx_min_m && K % kAmxK == 0;
  const bool vnni_tiles = isa == Isa::Avx512Vnni && M > kSmallM && K % 4 == 0;
  if ((amx_tiles || vnni_tiles) && N >= kAmxTile) {
    // Product tiles over the first N - N % 16 columns; the last N % 16 run below.
    const int8_t* qp = amx_pack_q(xq, M, K);
    const int64_t n16 = N / kAmxTile * kAmxTile;
    const int64_t task_rows = amx_task_rows(xq);
    const int64_t band = std::max<int64_t>(1, kProductBandBytes / (q_rows(xq.digits, task_rows) * K));
    parallel_tiles(M, n16, task_rows, kDynTileN,
                   [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int8_gemm_tiles(isa, qp, xq, K, w, scale, bias, y, N, M, m0, m1, n0, n1);
    }, band);
    if (n16 < N) {
      at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
        int8_gemm_dynamic(vec, xq, K, w, scale, bias, y, N, m0, m1, n16, N);
      });
    }
  } else if (M <= kSmallM) {
    parallel_cols(N, M * xq.digits * K, [&](int64_t n0, int64_t n1) {
      int8_gemm_dynamic(vec, xq, K, w, scale, bias, y, N, 0, M, n0, n1);
    });
  } else {
    parallel_tiles(M, N, amx_task_rows(xq), kDynTileN,
                   [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int8_gemm_dynamic(vec, xq, K, w, scale, bias, y, N, m0, m1, n0, n1);
    });
  }
}

// x [M, K] split into int8 digits (x_digits.cpp): 4 per row for float32 x, 3 for bfloat16 /
// float16. The tensors and the calling thread's q scratch hold the memory `view` points into.
struct DigitX {
  at::Tensor qsum, unit;
  QuantX view;
};

// Empty when x holds inf or NaN: the caller then runs a float path, which propagates them.
std::optional<DigitX> split_x(const at::Tensor& x2, int64_t int4_chunk) {
  const int64_t M = x2.size(0), K = x2.size(1);
  const int digits = x2.scalar_type() == at::kFloat ? 4 : 3;
  const at::Tensor xc = x2.contiguous();
  const int64_t ldq = quant_row_bytes(K);
  const int64_t rows = (M + x_rows_per_block(digits) - 1) / x_rows_per_block(digits) * kQBlockRows;
  DigitX d;
  int8_t* q = scratch<int8_t, kQSlot>(rows * ldq);
  d.qsum = at::empty({rows}, xc.options().dtype(at::kInt));
  d.unit = at::empty({M}, xc.options().dtype(at::kDouble));
  std::atomic<bool> finite{true};
  with_x_data(xc, [&](const auto* xp) {
    at::parallel_for(0, M, std::max<int64_t>(1, kMinWorkPerThread / K), [&](int64_t m0, int64_t m1) {
      if (!split_digits(xp, K, digits, int4_chunk, q, ldq,
                        d.unit.mutable_data_ptr<double>(), d.qsum.mutable_data_ptr<int32_t>(), m0,
                        m1))
        finite = false;
    });
  });
  if (!finite) return std::nullopt;
  d.view = QuantX{q, ldq, d.qsum.const_data_ptr<int32_t>(), digits,
                  nullptr, d.unit.const_data_ptr<double>()};
  return d;
}

bool use_digits(Isa isa, const at::Tensor& x, int64_t M, int64_t K, int64_t N) {
  if (K <= 0 || K > kDigitsMaxK) return false;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (isa == Isa::Avx512Amx)
    return K % kAmxK == 0 && N >= kAmxTile && (!bf16 || M <= kDigitsMaxMBFloat16);
  const bool short_rows_ok = K >= kDigitsMinK && (M <= kDigitsShortRowsMaxM ||
                                                  N * K >= kDigitsShortRowsMinWeights);
  return isa == Isa::Avx512Vnni && M > kSmallM && (K >= kVnniMinK || short_rows_ok) &&
         !(bf16 && cpu_has_bf16_gemm());
}

// int4_linear on AMX-INT8 with x's digits (int4_linear_amx.cpp), for whole 64-wide k-steps
// per group. Measured against the GEMV and AMX-BF16 paths (4096 x 4096, g128, cold): float32
// x 1.04x at M = 5, 1.4x at M = 12, 1.15-1.2x at M = 512 and 2048; float16 x 1.07-1.3x for
// M = 5..16, even at 32, behind from M = 128; bfloat16 x behind from M = 16. Below M = 5
// the GEMV wins: these AMX tiles run at ~15 G weights/s, below the int4 streaming rate.
bool use_int4_digits(Isa isa, const at::Tensor& x, int64_t M, int64_t K, int64_t group_size) {
  const at::ScalarType t = x.scalar_type();
  return isa == Isa::Avx512Amx && group_size % kAmxK == 0 && K <= kDigitsMaxK &&
         M >= kInt4DigitsMinM &&
         (t == at::kFloat || (t == at::kHalf && M <= kInt4DigitsMaxMFloat16));
}

// Whether every element of a float32 tensor (contiguous) is finite.
bool all_finite(const at::Tensor& t) {
  const float* p = t.const_data_ptr<float>();
  return std::all_of(p, p + t.numel(), [](float v) { return std::isfinite(v); });
}

// int4_linear with one row of x on AVX-512 VNNI: x as int8 digits (int4_gemv_digits), so the
// nibbles meet x in vpdpbusd without being widened to floats (17 zmm ops per 128 weights and
// row instead of 24). Zen 4, cold, digits / float GEMV time in turns (bfloat16 x: its
// vdpbf16ps GEMV), float32 / bfloat16 x: 4096^2 g128 0.72-0.78 / 0.77-0.85 (hot 0.76-0.80 /
// 0.79-0.84), g64 0.89 / 0.97, g32 0.80 / 0.88; 4096x11008 0.74 / 0.76, 11008x4096 0.89 / 0.88,
// 3072x768 0.87-0.91 / 0.91-0.94, 768x3072 0.99 / 0.82. Smaller weights gain nothing or lose
// (fixed costs per call weigh more than the widening): 2048x1024 0.98 / 0.94, 1024x2048
// 0.95 / 1.01, 576x1536 1.03 / 0.96, 1536x576 g64 / g96 1.1-1.26 / 1.0-1.1.
// With two rows the unpacking is no longer shared: M = 2 1.2x slower, M = 4 1.3-1.6x.
constexpr int64_t kInt4DigitsGemvMaxM = 1;
constexpr int64_t kInt4DigitsGemvMinWeights = int64_t(1) << 21;

bool use_int4_gemv_digits(Isa vec, int64_t M, int64_t N, int64_t K, int64_t group_size) {
  return vec == Isa::Avx512Vnni && M <= kInt4DigitsGemvMaxM &&
         N * K >= kInt4DigitsGemvMinWeights && int4_gemv_supported(group_size);
}

// The zero points as int8 for the AMX-INT8 int4 path (undefined: symmetric, zero 8), or
// nothing when they are not integers with every q - zero in int8 (q in [0, 15]). One pass:
// this runs on every call.
std::optional<at::Tensor> int8_zeros(const at::Tensor& zeros) {
  if (!zeros.defined()) return at::Tensor();
  at::Tensor out = at::empty(zeros.sizes(), zeros.options().dtype(at::kChar));
  const float* z = zeros.const_data_ptr<float>();
  int8_t* o = out.mutable_data_ptr<int8_t>();
  for (int64_t i = 0; i < zeros.numel(); ++i) {
    if (!(z[i] >= -112.f && z[i] <= 127.f) || z[i] != std::nearbyint(z[i])) return std::nullopt;
    o[i] = static_cast<int8_t>(z[i]);
  }
  return out;
}

// W8A8 at large M on AVX2, where MKL's float32 GEMM outruns the int8 kernel (vpmaddubsw):
// demo-model shapes at M = 256, 2 threads, 39-50 G multiply-adds/s against MKL's ~64. The
// int8 values of x and w go to float32 as they are, so each product and every partial sum is
// an integer; while K <= kExactFloatSumMaxK every such sum is below 2^24 in magnitude
// (127 * 127 * 1040 < 2^24), so float32 holds it exactly in any summation order and the
// result is the int32 product, rounded as the reference rounds it.
constexpr int64_t kExactFloatSumMaxK = 1040;

void w8a8_float_gemm(Isa vec, const int8_t* q, int64_t ldq, const float* rs, int64_t M, int64_t K,
                     int64_t N, const int8_t* w, const float* scale, const float* bias, float* y) {
  at::Tensor xq = at::empty({M, K}, at::TensorOptions().dtype(at::kFloat));
  float* xqp = xq.mutable_data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, kMinWorkPerThread / K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t k = 0; k < K; ++k) xqp[m * K + k] = static_cast<float>(q[m * ldq + k]);
  });
  tiled_mm<float>(xq, N, [&](int64_t n0, int64_t n1, float* tile) {
    int8_dequant(vec, w, K, n0, n1, tile);
  }, /*colscale=*/nullptr, /*bias=*/nullptr, y);
  // The int8 kernel's epilogue order: ((sum * row scale) * scale) + bias.
  scale_rows(y, M, N, rs, scale, bias, y);
}

// ---------------------------------------------------------------- ops
at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  const auto [s, b] = check_int8_args(x, weight, scale, bias, "int8_linear");
  const int64_t N = weight.size(0), K = weight.size(1), M = x_rows(x);
  if (M * N == 0) return finish(kernel_result(x, N), x, N);
  const at::Tensor w = weight.contiguous();
  const Isa isa = cpu_isa(), vec = vector_isa(isa);
  const at::Tensor x2 = x.reshape({M, K});
  const float* sp = s.const_data_ptr<float>();
  const float* bp = ptr_or_null<float>(b);
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const std::optional<DigitX> digits =
      use_digits(isa, x, M, K, N) ? split_x(x2, /*int4_chunk=*/0) : std::nullopt;
  const bool bf16_kernel =
      !digits && use_bf16_kernel(isa, K, M, kAmxMinM,
                                 /*dots=*/bf16_tiles(x) ? M > kSmallMBFloat16
                                                        : M > kSmallM && K >= kVnniMinK);
  at::Tensor y = kernel_result(x, N, /*in_x_dtype=*/bf16_kernel);
  float* yp = bf16_kernel ? nullptr : y.mutable_data_ptr<float>();
  if (digits) {
    int8_product(isa, digits->view, M, K, N, /*amx_min_m=*/1, wp, sp, bp, yp);
  } else if (bf16_kernel) {
    const YRows yr = y_rows(y);
    bf16_grid(x2, N, [&](const XPlanes& xp, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int8_linear_bf16(isa, xp, K, wp, sp, bp, yr, M, N, m0, m1, n0, n1);
    });
  } else if (M <= gemv_max_m(vec, x, N, K, /*int4=*/false)) {
    if (bf16_tiles(x) && vec == Isa::Avx512Vnni && M >= kInt8Bf16GemvMinM) {
      const at::Tensor xc = x2.contiguous();
      const c10::BFloat16* xp = xc.const_data_ptr<c10::BFloat16>();
      parallel_cols(N, M * K, [&](int64_t n0, int64_t n1) {
        int8_gemv_bf16(xp, M, K, wp, sp, bp, yp, N, n0, n1);
      });
    } else {
      const at::Tensor xf = x2.to(at::kFloat).contiguous();
      const float* xp = xf.const_data_ptr<float>();
      parallel_cols(N, M * K, [&](int64_t n0, int64_t n1) {
        int8_gemv(vec, xp, M, K, wp, sp, bp, yp, N, n0, n1);
      });
    }
  } else {
    tiled_mm<float>(x2.to(at::kFloat).contiguous(), N, [&](int64_t n0, int64_t n1, float* tile) {
      int8_dequant(vec, wp, K, n0, n1, tile);
    }, sp, bp, yp);
  }
  return finish(y, x, N);
}

// W8A8 through torch's int8 GEMM (at::_int_mm, oneDNN: exact int32 sums), then the int8
// kernel's epilogue: for short rows without AMX (kVnniMinK).
void w8a8_int_mm(const int8_t* q, int64_t ldq, const float* rs, int64_t M, int64_t K,
                 const at::Tensor& w, const float* scale, const float* bias, float* y) {
  const at::Tensor xq = at::from_blob(const_cast<int8_t*>(q), {M, K}, {ldq, 1},
                                      at::TensorOptions().dtype(at::kChar));
  const at::Tensor acc = at::_int_mm(xq, w.t());
  scale_rows(acc.const_data_ptr<int32_t>(), M, w.size(0), rs, scale, bias, y);
}

at::Tensor int8_linear_dynamic_cpu(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& scale,
                                   const std::optional<at::Tensor>& bias) {
  const auto [s, b] = check_int8_args(x, weight, scale, bias, "int8_linear_dynamic");
  const int64_t N = weight.size(0), K = weight.size(1);
  at::Tensor y = kernel_result(x, N);
  const int64_t M = y.size(0);
  if (y.numel() == 0) return finish(y, x, N);
  const Isa isa = cpu_isa(), vec = vector_isa(isa);
  const at::Tensor w = weight.contiguous();
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  const int64_t ldq = quant_row_bytes(K);
  at::Tensor rs = at::empty({M}, x.options().dtype(at::kFloat));
  at::Tensor qsum = at::empty({M}, x.options().dtype(at::kInt));
  int8_t* qp = scratch<int8_t, kQSlot>(M * ldq);
  float* rsp = rs.mutable_data_ptr<float>();
  int32_t* qsp = qsum.mutable_data_ptr<int32_t>();
  with_x_data(x2, [&](const auto* xp) {
    at::parallel_for(0, M, std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, K)),
                     [&](int64_t m0, int64_t m1) {
                       quantize_rows(vec, xp, K, qp, ldq, rsp, qsp, m0, m1);
                     });
  });
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const float* sp = s.const_data_ptr<float>();
  const float* bp = ptr_or_null<float>(b);
  float* yp = y.mutable_data_ptr<float>();
  if (vec == Isa::Avx2 && M > kSmallM && K <= kExactFloatSumMaxK) {
    w8a8_float_gemm(vec, qp, ldq, rsp, M, K, N, wp, sp, bp, yp);
    return finish(y, x, N);
  }
  if (isa == Isa::Avx512Vnni && M > kSmallM && K < kVnniMinK) {
    w8a8_int_mm(qp, ldq, rsp, M, K, w, sp, bp, yp);
    return finish(y, x, N);
  }
  const QuantX xq{qp, ldq, qsp, 1, rsp, nullptr};
  int8_product(isa, xq, M, K, N, kAmxMinM, wp, sp, bp, yp);
  return finish(y, x, N);
}

// int4_prepare_x with the rows of x split between the threads. On one thread it took 4.5% of
// the samples of a call while the other thread waited (Zen 4, 576 x 1536 float32 x, M = 512);
// one / both threads' time, in turns: 576 x 1536 M = 64 / 256 / 512 1.12 / 1.16 / 1.15x,
// 1536 x 576 M = 256 / 512 1.02x, 4096^2 M = 512 1.03x.
template <typename T>
void prepare_x_rows(const T* x, int64_t M, int64_t K, int64_t group_size, T* xp, float* xsum) {
  const int64_t G = K / group_size;
  at::parallel_for(0, M, std::max<int64_t>(1, kMinWorkPerThread / K), [&](int64_t m0, int64_t m1) {
    int4_prepare_x(x + m0 * K, m1 - m0, K, group_size, xp + m0 * K, xsum + m0 * G);
  });
}

at::Tensor int4_linear_cpu(const at::Tensor& x, const at::Tensor& packed,
                           const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                           int64_t group_size, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int4_linear";
  check_x(x, op);
  check_cpu(packed, op, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "myq::int4_linear: packed must be uint8, got ",
              packed.scalar_type());
  TORCH_CHECK(packed.dim() == 2, "myq::int4_linear: packed must be 2-D [N, K / 2], got ",
              packed.sizes());
  const int64_t N = packed.size(0), K = x.size(-1);
  TORCH_CHECK(K % 2 == 0 && packed.size(1) * 2 == K, "myq::int4_linear: packed.shape[1] (",
              packed.size(1), ") must equal K / 2 for x.shape[-1] = K = ", K, " (K even)");
  TORCH_CHECK(group_size > 0 && group_size % 2 == 0 && K % group_size == 0,
              "myq::int4_linear: group_size (", group_size,
              ") must be a positive even divisor of K (", K, ")");
  const int64_t G = K / group_size;
  TORCH_CHECK(scales.defined(), "myq::int4_linear: scales must be a tensor");
  at::Tensor s = float_param(scales, {N, G}, op, "scales");
  at::Tensor z = float_param(zeros, {N, G}, op, "zeros");
  at::Tensor b = float_param(bias, {N}, op, "bias");
  const int64_t M = x_rows(x);
  if (M * N == 0) return finish(kernel_result(x, N), x, N);
  const Isa isa = cpu_isa(), vec = vector_isa(isa);
  const at::Tensor p = packed.contiguous();
  const uint8_t* pp = p.const_data_ptr<uint8_t>();
  const float* sp = s.const_data_ptr<float>();
  const float* zp = ptr_or_null<float>(z);
  const float* bp = ptr_or_null<float>(b);
  const at::Tensor x2 = x.reshape({M, K});
  const int64_t amx_min_m = x.scalar_type() == at::kBFloat16 ? kAmxMinMInt4 : kAmxMinMInt4Float;
  const bool small_m = M <= gemv_max_m(vec, x, N, K, /*int4=*/true);
  const bool gemv = small_m && int4_gemv_supported(group_size);
  const std::optional<at::Tensor> zeros8 =
      use_int4_digits(isa, x, M, K, group_size) ? int8_zeros(z) : std::nullopt;
  const std::optional<DigitX> digits = zeros8 ? split_x(x2, kInt4Chunk) : std::nullopt;
  const std::optional<DigitX> gemv_digits =
      !digits && use_int4_gemv_digits(vec, M, N, K, group_size) ? split_x(x2, kInt4DigitStep)
                                                                : std::nullopt;
  const bool bf16_kernel = !digits && group_size % kAmxBf16K == 0 &&
                           use_bf16_kernel(isa, K, M, amx_min_m, /*dots=*/!small_m);
  at::Tensor y = kernel_result(x, N, /*in_x_dtype=*/bf16_kernel);
  float* yp = bf16_kernel ? nullptr : y.mutable_data_ptr<float>();
  // Dequantized tiles for at::mm: large M, and x holding inf or NaN where a GEMV would take
  // the zero points off at the end (sum of x * scale * zero), which turns an inf into NaN.
  auto int4_tiles = [&] {
    if (bf16_tiles(x)) {
      tiled_mm<c10::BFloat16>(x2.contiguous(), N, [&](int64_t n0, int64_t n1, c10::BFloat16* tile) {
        int4_dequant<c10::BFloat16>(vec, pp, sp, zp, group_size, K, n0, n1, tile);
      }, nullptr, bp, yp);
    } else {
      tiled_mm<float>(x2.to(at::kFloat).contiguous(), N, [&](int64_t n0, int64_t n1, float* tile) {
        int4_dequant<float>(vec, pp, sp, zp, group_size, K, n0, n1, tile);
      }, nullptr, bp, yp);
    }
  };
  if (digits) {
    const int8_t* qpp = amx_pack_q(digits->view, M, K);
    const int8_t* zp8 = ptr_or_null<int8_t>(*zeros8);
    parallel_tiles(M, N, amx_task_rows(digits->view), kAmxTileN,
                   [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int4_linear_amx_int8(qpp, digits->view, K, pp, sp, zp8, group_size, bp, yp, N, M, N, m0, m1,
                           n0, n1);
    });
  } else if (bf16_kernel) {
    const YRows yr = y_rows(y);
    bf16_grid(x2, N, [&](const XPlanes& xp, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int4_linear_bf16(isa, xp, K, pp, sp, zp, group_size, bp, yr, M, N, m0, m1, n0, n1);
    });
  } else if (gemv_digits) {
    at::Tensor xsum = at::empty({M, G}, x.options().dtype(at::kFloat));
    with_x_data(x2.contiguous(), [&](const auto* xp) {
      int4_group_sums(xp, M, K, group_size, xsum.mutable_data_ptr<float>());
    });
    parallel_cols(N, M * K, [&](int64_t n0, int64_t n1) {
      int4_gemv_digits(gemv_digits->view, xsum.const_data_ptr<float>(), M, K, pp, sp, zp,
                       group_size, bp, yp, N, n0, n1);
    });
  } else if (gemv && bf16_tiles(x) && vec == Isa::Avx512Vnni) {
    const at::Tensor xc = x2.contiguous();
    at::Tensor xp = at::empty({M, K}, xc.options());
    at::Tensor xsum = at::empty({M, G}, xc.options().dtype(at::kFloat));
    prepare_x_rows(xc.const_data_ptr<c10::BFloat16>(), M, K, group_size,
                   xp.mutable_data_ptr<c10::BFloat16>(), xsum.mutable_data_ptr<float>());
    if (!all_finite(xsum)) {
      int4_tiles();
      return finish(y, x, N);
    }
    parallel_cols(N, M * K, [&](int64_t n0, int64_t n1) {
      int4_gemv_bf16(xp.const_data_ptr<c10::BFloat16>(), xsum.const_data_ptr<float>(), M, K, pp,
                     sp, zp, group_size, bp, yp, N, n0, n1);
    });
  } else if (gemv) {
    const at::Tensor xf = x2.to(at::kFloat).contiguous();
    const float* xfp = xf.const_data_ptr<float>();
    at::Tensor xp, xsum;  // the reordered x, for the paths that read it
    if (int4_gemv_reads_xp(vec, M)) {
      xp = at::empty({M, K}, xf.options());
      xsum = at::empty({M, G}, xf.options());
      prepare_x_rows(xfp, M, K, group_size, xp.mutable_data_ptr<float>(),
                     xsum.mutable_data_ptr<float>());
      if (!all_finite(xsum)) {
        int4_tiles();
        return finish(y, x, N);
      }
    }
    const float* xpp = ptr_or_null<float>(xp);
    const float* xsp = ptr_or_null<float>(xsum);
    // Every column block reads all of x: kGemvRowChunk rows at a time keep it in L3 (Zen 5,
    // 4096^2 g128 float32 x hot, M = 2048: 300 ms in one pass, 208 in chunks of 256).
    for (int64_t m0 = 0; m0 < M; m0 += kGemvRowChunk) {
      const int64_t rows = std::min(kGemvRowChunk, M - m0);
      parallel_cols(N, rows * K, [&](int64_t n0, int64_t n1) {
        int4_gemv(vec, xfp + m0 * K, xpp ? xpp + m0 * K : nullptr, xsp ? xsp + m0 * G : nullptr,
                  rows, K, pp, sp, zp, group_size, bp, yp + m0 * N, N, n0, n1);
      });
    }
  } else {
    int4_tiles();
  }
  return finish(y, x, N);
}

// pack_int4 (q: two codes per output byte) and unpack_int4 (packed: two codes out of each
// byte). The output is the input with its last dimension halved or doubled; threads split
// the packed bytes.
at::Tensor repack_int4(const at::Tensor& in, bool pack) {
  const char* op = pack ? "pack_int4" : "unpack_int4";
  const char* name = pack ? "q" : "packed";
  check_cpu(in, op, name);
  TORCH_CHECK(in.scalar_type() == at::kByte, "myq::", op, ": ", name, " must be uint8, got ",
              in.scalar_type());
  TORCH_CHECK(in.dim() >= 1 && (!pack || in.size(-1) % 2 == 0), "myq::", op, ": ", name,
              pack ? ".shape[-1] must be even" : " must have at least one dimension",
              ", got shape ", in.sizes());
  std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
  shape.back() = pack ? shape.back() / 2 : shape.back() * 2;
  at::Tensor out = at::empty(shape, in.options());
  const int64_t bytes = pack ? out.numel() : in.numel();
  if (bytes == 0) return out;
  const at::Tensor src = in.contiguous();
  const uint8_t* sp = src.const_data_ptr<uint8_t>();
  uint8_t* dp = out.mutable_data_ptr<uint8_t>();
  const Isa vec = vector_isa(cpu_isa());
  at::parallel_for(0, bytes, 1 << 18, [&](int64_t i0, int64_t i1) {
    if (pack) {
      pack_int4(vec, sp + 2 * i0, dp + i0, i1 - i0);
    } else {
      unpack_int4(vec, sp + i0, dp + 2 * i0, i1 - i0);
    }
  });
  return out;
}

at::Tensor pack_int4_cpu(const at::Tensor& q) { return repack_int4(q, /*pack=*/true); }
at::Tensor unpack_int4_cpu(const at::Tensor& packed) { return repack_int4(packed, /*pack=*/false); }

}  // namespace
}  // namespace myq

TORCH_LIBRARY_IMPL(myq, CPU, m) {
  m.impl("int8_linear", &myq::int8_linear_cpu);
  m.impl("int8_linear_dynamic", &myq::int8_linear_dynamic_cpu);
  m.impl("int4_linear", &myq::int4_linear_cpu);
  m.impl("pack_int4", &myq::pack_int4_cpu);
  m.impl("unpack_int4", &myq::unpack_int4_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "myq_kernels compiled kernels (C++ CPU; CUDA when built)";
  m.def("cpu_isa", [] { return std::string(myq::isa_name(myq::cpu_isa())); },
        "The CPU code path chosen at run time: avx512_amx, avx512_vnni, avx2 or scalar "
        "(MYQ_CPU_ISA forces a lower one).");
}
