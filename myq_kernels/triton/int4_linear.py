"""W4A16, group-wise: W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size,
q packed two per byte (element 2i in the low nibble of byte i, 2i + 1 in the high one);
zeros=None means zero point 8.

Each step loads a [BK // 2, BN] tile of packed bytes, splits the nibbles and interleaves
them (tl.join + reshape) into [BK, BN] codes, dequantizes them in registers in float32
exactly as the reference does, and multiplies in x's dtype on tensor cores with float32
accumulation (float32 x: IEEE float32 dot). When a group spans whole K tiles the tile
reads one scale (and zero) per column, else one per element (gathered, L1-resident).
"""
import torch
import triton.language as tl

from ._common import (as_compute, as_result, grid_2d, interpreted, kernel, linear_blocks, linear_output,
                      output_tile, rows, store_output_tile, vectors)


def _w4a16_kernel(x_ptr, p_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, G, group_size,
                  stride_xm, stride_pn, stride_om,
                  HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, F32_DOT: tl.constexpr,
                  GROUP_PER_TILE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, m_ok, n_ok = output_tile(M, N, BLOCK_M, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rb = tl.arange(0, BLOCK_K // 2)
    half_k = K // 2
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        kb = k0 // 2 + rb
        p = tl.load(p_ptr + rn[None, :] * stride_pn + kb[:, None], mask=n_ok[None, :] & (kb < half_k)[:, None],
                    other=0)                                       # [BK/2, BN] bytes
        codes = tl.join(p & 0xF, p >> 4)                           # [BK/2, BN, 2]
        codes = tl.reshape(tl.permute(codes, (0, 2, 1)), (BLOCK_K, BLOCK_N))  # row 2i: low, 2i+1: high
        q = codes.to(tl.float32)
        if GROUP_PER_TILE:
            g = k0 // group_size
            s = tl.load(s_ptr + rn * G + g, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_ZEROS:
                z = tl.load(z_ptr + rn * G + g, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            else:
                z = 8.0
        else:
            g = kk // group_size
            sz_mask = n_ok[None, :] & k_ok[:, None]
            s = tl.load(s_ptr + rn[None, :] * G + g[:, None], mask=sz_mask, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(z_ptr + rn[None, :] * G + g[:, None], mask=sz_mask, other=0.0).to(tl.float32)
            else:
                z = 8.0
        w = (q - z) * s                                            # [BK, BN] float32
        if F32_DOT:
            acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    store_output_tile(out_ptr, acc, b_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)


_W4A16 = kernel(_w4a16_kernel)


def int4_linear(x, packed, scales, zeros, group_size, bias=None):
    """Triton W4A16 (see reference.int4_linear); x [..., K], result in x's dtype."""
    n = packed.shape[0]
    k = x.shape[-1]
    interp = interpreted(x)
    x2 = as_compute(rows(x), interp)
    m = x2.shape[0]
    out, launch = linear_output(x, m, n, bias, x2.dtype)
    if launch:
        p = packed.contiguous()
        s, z, b = vectors(interp, scales, zeros, bias)
        bm, bn, bk, warps, stages = linear_blocks(m, n, interp, bk_max=64)
        _W4A16.on(x.device)[grid_2d(m, n, bm, bn)](
            x2, p, s, z if z is not None else s, b if b is not None else s, out,
            m, n, k, k // group_size, group_size, x2.stride(0), p.stride(0), out.stride(0),
            HAS_ZEROS=z is not None, HAS_BIAS=b is not None, F32_DOT=x2.dtype == torch.float32,
            GROUP_PER_TILE=group_size % bk == 0,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return as_result(out, x)
