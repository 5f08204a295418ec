"""pack_int4 / unpack_int4: element 2i in the low nibble of byte i, 2i + 1 in the high one."""
import torch
import triton
import triton.language as tl

from ._common import kernel

BLOCK = 1024


def _pack_kernel(q_ptr, out_ptr, n_out, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_out
    lo = tl.load(q_ptr + 2 * i, mask=ok, other=0)
    hi = tl.load(q_ptr + 2 * i + 1, mask=ok, other=0)
    tl.store(out_ptr + i, (lo & 0xF) | ((hi & 0xF) << 4), mask=ok)


def _unpack_kernel(p_ptr, out_ptr, n_in, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_in
    p = tl.load(p_ptr + i, mask=ok, other=0)
    tl.store(out_ptr + 2 * i, p & 0xF, mask=ok)
    tl.store(out_ptr + 2 * i + 1, p >> 4, mask=ok)


_PACK = kernel(_pack_kernel)
_UNPACK = kernel(_unpack_kernel)


def pack_int4(q):
    """uint8 (or any integer) codes 0..15 [..., K] (K even) -> uint8 [..., K // 2]."""
    src = q.to(torch.uint8).contiguous()
    out = torch.empty((*q.shape[:-1], q.shape[-1] // 2), dtype=torch.uint8, device=q.device)
    n = out.numel()
    if n:
        _PACK.on(q.device)[(triton.cdiv(n, BLOCK),)](src, out, n, BLOCK=BLOCK)
    return out


def unpack_int4(packed):
    """uint8 [..., K // 2] -> uint8 codes 0..15 [..., K]."""
    src = packed.contiguous()
    out = torch.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=torch.uint8, device=packed.device)
    n = src.numel()
    if n:
        _UNPACK.on(packed.device)[(triton.cdiv(n, BLOCK),)](src, out, n, BLOCK=BLOCK)
    return out
