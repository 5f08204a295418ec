// Intel AMX helpers shared by the AMX kernels (int8_gemm_dynamic.cpp, bf16_linear.cpp).
// Tile state is per thread: each worker configures the tiles (amx_begin) before its first
// tile instruction and releases them (amx_end) when done.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "isa.h"

namespace myq {

struct alignas(64) AmxTileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: product tiles 0-3, A tiles 4-5, B tiles 6-7.
MYQ_TARGET_AMX inline void amx_begin() {
  AmxTileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  // GCC does not see that ldtilecfg reads cfg and drops the stores above without this.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

MYQ_TARGET_AMX inline void amx_end() { _tile_release(); }

// The weight-side A tiles of the W8A16 / W4A16 AMX kernels: 2 x 16 weight rows converted at a
// time into a per-thread row-major buffer, kept across calls.
constexpr int64_t kAmxRowPair = 32;
template <typename T>
T* amx_a_buffer(size_t elems) {
  thread_local std::vector<T> buf;
  if (buf.size() < elems) buf.resize(elems);
  return buf.data();
}

// B-tile layout of a row-major matrix with `row_bytes` bytes per row (a multiple of 4),
// rows `src_stride` bytes apart:
// dst[((b * (row_bytes / 4) + g) * 16 + r) * 4 + i] = src[(16 b + r) * src_stride + 4 g + i],
// rows >= rows_total read as zero. Packs the 16-row blocks [b0, b1).
void amx_pack_rows(const void* src, int64_t row_bytes, int64_t src_stride, int64_t rows_total,
                   void* dst, int64_t b0, int64_t b1);

}  // namespace myq
