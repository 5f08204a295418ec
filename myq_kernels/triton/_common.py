"""Shared plumbing of the Triton kernels.

Triton decides at import time whether its kernels (and triton.language's own helpers)
are compiled for a GPU or run by the interpreter: `TRITON_INTERPRET=1` must be in the
environment before triton is first imported. So in one process the kernels either run
compiled on CUDA tensors, or interpreted on CPU tensors (CUDA tensors then also go
through the interpreter, slowly). `kernel(fn)` wraps `triton.jit(fn)` and, per call,
raises a clear error when the tensors' device does not fit the mode triton started in.

Also here: what the three linear ops (W8A16, W8A8, W4A16) share, on the host (result
buffer, empty and K = 0 cases, block sizes) and in the kernels (the output tile's indices,
and the bias + store epilogue).

Interpreter caveat handled here: bfloat16 is broken in the interpreter, so CPU calls run
bfloat16 tensors as float32 (exact) and round the result once at the end.
"""
import math

import torch
import triton
import triton.language as tl
from triton import knobs

INTERPRETER = bool(knobs.runtime.interpret)


class Kernel:
    """`k.on(device)[grid](*args)`: the jitted kernel, after checking the device fits the mode."""

    def __init__(self, fn):
        self.jitted = triton.jit(fn)

    def on(self, device: torch.device):
        if device.type == "cpu" and not INTERPRETER:
            raise RuntimeError(
                "myq Triton kernels got CPU tensors, but triton was imported without "
                "TRITON_INTERPRET=1: set it in the environment before the process imports triton")
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"myq Triton kernels run on CUDA tensors (or CPU tensors through the "
                               f"interpreter), got a {device.type} tensor")
        return self.jitted


def kernel(fn):
    return Kernel(fn)


def interpreted(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def as_compute(t, interp):
    """float tensors the kernel reads: bfloat16 becomes float32 under the interpreter."""
    if interp and t.dtype == torch.bfloat16:
        return t.float()
    return t


def vectors(interp, *tensors):
    """Scales, zero points and bias as the kernels read them (contiguous, compute dtype);
    None stays None."""
    return [None if t is None else as_compute(t.contiguous(), interp) for t in tensors]


def rows(x: torch.Tensor):
    """x [..., K] as a 2-D [M, K] view (or copy) whose last dimension is contiguous."""
    k = x.shape[-1]
    x2 = x.reshape(math.prod(x.shape[:-1]), k)  # not -1: ambiguous when K = 0
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    return x2


def linear_blocks(m: int, n: int, interp: bool, bk_max: int = 64):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for an [m, n] output.

    The interpreter runs each program in numpy: small blocks keep the test shapes fast.
    On a GPU: a 16-row tile for decode-size batches (tl.dot needs >= 16), larger for big M.
    """
    if interp:
        return 16 if m <= 16 else 32, 32, 32, 4, 1
    if m <= 16:
        return 16, 64, min(128, max(bk_max, 64)), 4, 4
    if m <= 64:
        return 64, 64, bk_max, 4, 4
    return 128, 128, bk_max, 8, 3


def grid_2d(m, n, bm, bn):
    return (triton.cdiv(n, bn), triton.cdiv(m, bm))


def linear_output(x, m, n, bias, dtype):
    """(out, launch): the [m, n] result buffer of a linear op on x [..., K], and whether a
    kernel must fill it. An empty result needs no launch, nor does K = 0: every dot product
    is empty, so the result is the bias (or 0)."""
    out = torch.empty((m, n), dtype=dtype, device=x.device)
    if m == 0 or n == 0:
        return out, False
    if x.shape[-1] == 0:
        out.zero_()
        if bias is not None:
            out += bias.to(dtype)
        return out, False
    return out, True


def as_result(out, x):
    """The [M, N] buffer in x's dtype and batch shape [..., N]."""
    return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[1])


@triton.jit
def output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows and columns of this program's output tile (grid_2d: axis 0 walks N, axis 1 M)
    and their in-bounds masks."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, rm < M, rn < N


@triton.jit
def store_output_tile(out_ptr, y, b_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS: tl.constexpr):
    """y (float32, + bias[n]) into the output tile, rounded once to out's dtype."""
    if HAS_BIAS:
        y = y + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])
