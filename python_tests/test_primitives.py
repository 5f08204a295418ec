"""Quantizers: error at most half a step, exact round trips, shapes per granularity."""
import pytest
import torch

import myq_kernels
from myq_kernels import primitives, reference

GRANULARITIES = ["tensor", "channel", 32, 128]


def _step_per_element(scale, granularity, shape):
    if granularity == "tensor":
        return scale.expand(shape)
    if granularity == "channel":
        return scale.unsqueeze(-1).expand(shape)
    return scale.repeat_interleave(granularity, dim=-1)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", [8, 4])
def test_absmax_error_within_half_step(granularity, bits):
    w = torch.randn(12, 256) * torch.rand(12, 1) * 3
    q, scale = myq_kernels.absmax_quantize(w, bits=bits, granularity=granularity)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.abs().max() <= qmax
    assert q.abs().max() == qmax  # the absmax element uses the full range
    error = (myq_kernels.dequantize(q, scale, granularity=granularity) - w).abs()
    step = _step_per_element(scale, granularity, w.shape)
    assert (error <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", [8, 4])
def test_zeropoint_error_within_half_step(granularity, bits):
    w = torch.randn(12, 256) + 0.7  # skewed, so the zero point matters
    q, scale, zero = myq_kernels.zeropoint_quantize(w, bits=bits, granularity=granularity)
    assert q.dtype == torch.uint8 and q.max() <= 2 ** bits - 1
    assert torch.equal(zero, zero.round()) and zero.min() >= 0
    error = (myq_kernels.dequantize(q, scale, zero, granularity=granularity) - w).abs()
    step = _step_per_element(scale, granularity, w.shape)
    assert (error <= step / 2 + 1e-6).all()


def test_scale_shapes():
    w = torch.randn(6, 64)
    assert myq_kernels.absmax_quantize(w, granularity="tensor")[1].shape == ()
    assert myq_kernels.absmax_quantize(w, granularity="channel")[1].shape == (6,)
    assert myq_kernels.zeropoint_quantize(w, granularity=16)[2].shape == (6, 4)


def test_all_zero_rows_quantize_to_zero():
    w = torch.zeros(3, 32)
    q, scale = myq_kernels.absmax_quantize(w)
    assert not q.any() and not myq_kernels.dequantize(q, scale).any()
    q, scale, zero = myq_kernels.zeropoint_quantize(w, bits=4, granularity=16)
    assert not myq_kernels.dequantize(q, scale, zero, granularity=16).any()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_weight_is_what_int4_linear_consumes(symmetric, group_size):
    w = torch.randn(10, 256)
    packed, scales, zeros = myq_kernels.quantize_int4_weight(w, group_size, symmetric=symmetric)
    assert packed.shape == (10, 128) and scales.shape == (10, 256 // group_size)
    assert (zeros is None) == symmetric
    w_hat = reference.dequantize_int4(packed, scales, zeros, group_size)
    step = scales.repeat_interleave(group_size, dim=-1)
    assert ((w_hat - w).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(3, 256)
    torch.testing.assert_close(myq_kernels.int4_linear(x, packed, scales, zeros, group_size), x @ w_hat.T,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call,error,words", [
    (lambda: myq_kernels.absmax_quantize(torch.randn(4, 30), granularity=8), ValueError, "group size 8"),
    (lambda: myq_kernels.absmax_quantize(torch.randn(4, 32), granularity="row"), ValueError, "granularity"),
    (lambda: myq_kernels.absmax_quantize(torch.randn(4, 32), bits=9), ValueError, "bits"),
    (lambda: myq_kernels.absmax_quantize(torch.ones(4, 32, dtype=torch.int32)), TypeError, "floating-point"),
    (lambda: myq_kernels.absmax_quantize(torch.tensor([[1.0, float("nan")]])), ValueError, "NaN"),
    (lambda: myq_kernels.quantize_int4_weight(torch.randn(4, 32, 2), 16), ValueError, "2-D"),
])
def test_primitive_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()
