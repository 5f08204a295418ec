"""Shared inputs and tolerances for testing every backend of the ops against the reference."""
import torch

from myq_kernels import primitives, reference

# (batch shape of x, N, K): M = 1 and large, N = 1, K not a multiple of 16/32/64,
# several batch dims, and K large enough that accumulation order matters.
LINEAR_SHAPES = [
    ((1,), 1, 2),
    ((1,), 64, 64),
    ((1,), 257, 4096),
    ((3,), 7, 30),
    ((5,), 33, 100),
    ((2, 3), 17, 258),
    ((2, 2, 2), 64, 96),
    ((8,), 300, 1024),
    ((9,), 65, 200),
    ((33,), 129, 1000),
    ((130,), 96, 512),
    ((257,), 31, 384),
]

# (batch shape, N, K, group_size): K = group for per-channel; groups not a multiple of 16.
INT4_SHAPES = [
    ((1,), 1, 64, 32),
    ((1,), 257, 4096, 128),
    ((3,), 7, 96, 32),
    ((2, 3), 17, 256, 64),
    ((5,), 33, 100, 100),
    ((9,), 65, 384, 128),
    ((33,), 40, 200, 40),
    ((130,), 96, 512, 128),
    ((257,), 31, 384, 384),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Relative accuracy of the dot products, in units of sum |x_k * w_k| (the usual bound):
# float32 accumulation, plus rounding of the result to x's dtype.
_UNIT = {torch.float32: 2e-6, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -10}


def make_x(batch, k, dtype, contiguous=True):
    if contiguous:
        return torch.randn(*batch, k).to(dtype)
    # every other column of a wider tensor: a strided, non-contiguous view
    return torch.randn(*batch, 2 * k).to(dtype)[..., ::2]


def int8_weight(n, k):
    w = torch.randn(n, k)
    q, scale = primitives.absmax_quantize(w, bits=8, granularity="channel")
    return q, scale


def int4_weight(n, k, group_size, symmetric):
    return primitives.quantize_int4_weight(torch.randn(n, k), group_size, symmetric=symmetric)


def make_bias(n, with_bias):
    return torch.randn(n) if with_bias else None


def assert_linear_close(y, expected, magnitude, dtype):
    """y (x's dtype) against the float64 reference, within `_UNIT[dtype] * magnitude`
    where magnitude = |x| @ |W|^T (+ |bias|) bounds the size of each sum."""
    assert y.dtype == dtype, f"result dtype {y.dtype}, expected {dtype}"
    assert y.shape == expected.shape, f"result shape {tuple(y.shape)}, expected {tuple(expected.shape)}"
    assert torch.isfinite(y).all(), "result has NaN/inf: an output element was not written?"
    error = (y.double() - expected).abs()
    bound = _UNIT[dtype] * magnitude + 1e-6
    worst = (error / bound).max().item() if error.numel() else 0.0
    assert worst <= 1.0, f"error {error.max().item():.3g} exceeds the bound by {worst:.2f}x"


def int8_expected(x, weight, scale, bias):
    expected = reference.int8_linear(x.double(), weight, scale.double(),
                                     None if bias is None else bias.double())
    magnitude = (x.double().abs() @ weight.double().abs().T) * scale.double()
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    return expected, magnitude


def int4_expected(x, packed, scales, zeros, group_size, bias):
    w = reference.dequantize_int4(packed, scales, zeros, group_size, torch.float64)
    expected = x.double() @ w.T
    magnitude = x.double().abs() @ w.abs().T
    if bias is not None:
        expected = expected + bias.double()
        magnitude = magnitude + bias.double().abs()
    return expected, magnitude
