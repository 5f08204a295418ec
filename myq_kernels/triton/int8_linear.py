"""W8A16: y = (x @ weight.T) * scale + bias, int8 weight [N, K], per-channel scale [N].

Tiles of x [BM, BK] and of the int8 weight [BK, BN]; the weight is converted to x's dtype
in registers (exact: |q| <= 127) and multiplied on tensor cores with float32
accumulation (float32 x: IEEE float32 dot, no TF32). Scale and bias in the epilogue.
"""
import torch
import triton.language as tl

from ._common import (as_compute, as_result, grid_2d, interpreted, kernel, linear_blocks, linear_output,
                      output_tile, rows, store_output_tile, vectors)


def _w8a16_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                  HAS_BIAS: tl.constexpr, F32_DOT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, m_ok, n_ok = output_tile(M, N, BLOCK_M, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0)
        if F32_DOT:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    s = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    y = acc * s[None, :]
    store_output_tile(out_ptr, y, b_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)


_W8A16 = kernel(_w8a16_kernel)


def int8_linear(x, weight, scale, bias=None):
    """Triton W8A16 (see reference.int8_linear); x [..., K], result in x's dtype."""
    n, k = weight.shape
    interp = interpreted(x)
    x2 = as_compute(rows(x), interp)
    m = x2.shape[0]
    out, launch = linear_output(x, m, n, bias, x2.dtype)
    if launch:
        w = weight.contiguous()
        s, b = vectors(interp, scale, bias)
        bm, bn, bk, warps, stages = linear_blocks(m, n, interp, bk_max=64)
        _W8A16.on(x.device)[grid_2d(m, n, bm, bn)](
            x2, w, s, b if b is not None else s, out, m, n, k, x2.stride(0), w.stride(0), out.stride(0),
            HAS_BIAS=b is not None, F32_DOT=x2.dtype == torch.float32,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return as_result(out, x)
