"""W8A8: per-token dynamic int8 quantization of x, then an int8 x int8 -> int32 GEMM with the
per-token x per-channel dequant and bias in the epilogue.

Quantization matches reference.quantize_per_token bit for bit: s = max|row| / 127 and
q = x / s with IEEE round-to-nearest divisions (tl.math.div_rn), rounded half to even,
clamped to +-127; rows with s = 0 divide by 1.
"""
import torch
import triton
import triton.language as tl

from ._common import (as_compute, as_result, grid_2d, interpreted, kernel, linear_blocks, linear_output,
                      output_tile, rows, store_output_tile, vectors)


def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        kk = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.math.div_rn(tl.max(amax, axis=0), 127.0)
    safe = tl.where(scale > 0.0, scale, 1.0)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        kk = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, safe)
        f = tl.floor(v)
        frac = v - f                                   # exact for |v| < 2^23
        f_even = (f - 2.0 * tl.floor(f * 0.5)) == 0.0
        r = tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, tl.where(f_even, f, f + 1.0)))
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + kk, r.to(tl.int8), mask=kk < K)


def _int8_gemm_kernel(q_ptr, w_ptr, rs_ptr, cs_ptr, b_ptr, out_ptr, M, N, K, stride_qm, stride_wn, stride_om,
                      HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, m_ok, n_ok = output_tile(M, N, BLOCK_M, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        a = tl.load(q_ptr + rm[:, None] * stride_qm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
    rs = tl.load(rs_ptr + rm, mask=m_ok, other=0.0)
    cs = tl.load(cs_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    y = acc.to(tl.float32) * rs[:, None] * cs[None, :]
    store_output_tile(out_ptr, y, b_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)


_QUANTIZE = kernel(_quantize_rows_kernel)
_GEMM = kernel(_int8_gemm_kernel)


def quantize_per_token(x):
    """(q int8 [..., K], s float32 [...]): Triton version of reference.quantize_per_token."""
    k = x.shape[-1]
    interp = interpreted(x)
    x2 = as_compute(rows(x), interp)
    m = x2.shape[0]
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m:
        block = min(1024, max(16, triton.next_power_of_2(k)))
        if k == 0:
            s.zero_()
        else:
            _QUANTIZE.on(x.device)[(m,)](x2, q, s, k, x2.stride(0), q.stride(0), BLOCK=block,
                                         num_warps=4 if block <= 1024 else 8)
    return q.reshape(x.shape), s.reshape(x.shape[:-1])


def int8_linear_dynamic(x, weight, scale, bias=None):
    """Triton W8A8 (see reference.int8_linear_dynamic); x [..., K], result in x's dtype."""
    n, k = weight.shape
    interp = interpreted(x)
    q, rs = quantize_per_token(x)
    q = rows(q)
    rs = rs.reshape(-1)
    m = q.shape[0]
    out_dtype = torch.float32 if (interp and x.dtype == torch.bfloat16) else x.dtype
    out, launch = linear_output(x, m, n, bias, out_dtype)
    if launch:
        w = weight.contiguous()
        cs, b = vectors(interp, scale, bias)
        bm, bn, bk, warps, stages = linear_blocks(m, n, interp, bk_max=128)
        _GEMM.on(x.device)[grid_2d(m, n, bm, bn)](
            q, w, rs, cs, b if b is not None else cs, out, m, n, k, q.stride(0), w.stride(0), out.stride(0),
            HAS_BIAS=b is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return as_result(out, x)
