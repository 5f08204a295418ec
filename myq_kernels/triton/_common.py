"""Shared plumbing of the Triton kernels.

Triton decides at import time whether its kernels (and triton.language's own helpers)
are compiled for a GPU or run by the interpreter: `TRITON_INTERPRET=1` must be in the
environment before triton is first imported. So in one process the kernels either run
compiled on CUDA tensors, or interpreted on CPU tensors (CUDA tensors then also go
through the interpreter, slowly). `kernel(fn)` wraps `triton.jit(fn)` and, per call,
raises a clear error when the tensors' device does not fit the mode triton started in.

Interpreter caveat handled here: bfloat16 is broken in the interpreter, so CPU calls run
bfloat16 tensors as float32 (exact) and round the result once at the end.
"""
import torch
import triton
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
    if t is None:
        return None
    if interp and t.dtype == torch.bfloat16:
        return t.float()
    return t


def rows(x: torch.Tensor):
    """x [..., K] as a 2-D [M, K] view (or copy) whose last dimension is contiguous."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
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
