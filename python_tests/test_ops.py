"""Every op on every CPU backend against the float64 reference."""
import pytest
import torch

import myq_kernels
from myq_kernels import reference

from op_cases import (DTYPES, INT4_SHAPES, LINEAR_SHAPES, assert_linear_close, int4_expected,
                      int4_weight, int8_expected, int8_weight, make_bias, make_x)

CPU_BACKENDS = [name for name, b in myq_kernels.backends().items() if "cpu" in b.devices and name != "triton"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("MYQ_BACKEND", request.param)
    return request.param


def test_compiled_extension_is_loaded():
    """CI builds the extension; the cpp backend silently missing would test nothing."""
    cpp = myq_kernels.backends()["cpp"]
    assert cpp.available, cpp.reason


@pytest.mark.parametrize("batch,n,k", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear(backend, poisoned_outputs, batch, n, k, dtype, with_bias):
    x = make_x(batch, k, dtype, contiguous=k % 3 != 0)
    weight, scale = int8_weight(n, k)
    bias = make_bias(n, with_bias)
    y = myq_kernels.int8_linear(x, weight, scale, bias)
    assert_linear_close(y, *int8_expected(x, weight, scale, bias), dtype)


@pytest.mark.parametrize("batch,n,k", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_dynamic(backend, poisoned_outputs, batch, n, k, dtype, with_bias):
    x = make_x(batch, k, dtype, contiguous=k % 3 != 0)
    if x.numel() > k:
        x[..., 0, :] = 0.0  # an all-zero token must not divide by zero
    weight, scale = int8_weight(n, k)
    bias = make_bias(n, with_bias)
    y = myq_kernels.int8_linear_dynamic(x, weight, scale, bias)
    expected = reference.int8_linear_dynamic(x.double(), weight, scale.double(),
                                             None if bias is None else bias.double())
    q, row_scale = reference.quantize_per_token(x)
    magnitude = (q.double().abs() @ weight.double().abs().T) * row_scale.double().unsqueeze(-1) * scale.double()
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    assert_linear_close(y, expected, magnitude, dtype)


def test_int8_linear_dynamic_is_close_to_float():
    """W8A8 quantizes activations: its result stays within a few % of the float product."""
    x = torch.randn(16, 512)
    weight, scale = int8_weight(64, 512)
    exact = x @ (weight.float() * scale[:, None]).T
    y = myq_kernels.int8_linear_dynamic(x, weight, scale)
    assert (y - exact).norm() / exact.norm() < 0.02


@pytest.mark.parametrize("batch,n,k,group_size", INT4_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_linear(backend, poisoned_outputs, batch, n, k, group_size, dtype, symmetric):
    x = make_x(batch, k, dtype, contiguous=n % 2 == 1)
    packed, scales, zeros = int4_weight(n, k, group_size, symmetric)
    bias = make_bias(n, with_bias=symmetric)
    y = myq_kernels.int4_linear(x, packed, scales, zeros, group_size, bias)
    assert_linear_close(y, *int4_expected(x, packed, scales, zeros, group_size, bias), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scales_and_bias_in_other_dtypes(backend, dtype):
    x = torch.randn(4, 64)
    weight, scale = int8_weight(8, 64)
    bias = torch.randn(8)
    y = myq_kernels.int8_linear(x, weight, scale.to(dtype), bias.to(dtype))
    assert_linear_close(y, *int8_expected(x, weight, scale.to(dtype).float(), bias.to(dtype).float()), torch.float32)
    packed, scales, zeros = int4_weight(8, 64, 32, symmetric=False)
    y = myq_kernels.int4_linear(x, packed, scales.to(dtype), zeros.to(dtype), 32, bias.to(dtype))
    expected = int4_expected(x, packed, scales.to(dtype).float(), zeros.to(dtype).float(), 32,
                             bias.to(dtype).float())
    assert_linear_close(y, *expected, torch.float32)


@pytest.mark.parametrize("op", ["int8_linear", "int8_linear_dynamic", "int4_linear"])
def test_empty_batch_gives_empty_result(backend, op):
    x = torch.randn(0, 64)
    if op == "int4_linear":
        packed, scales, zeros = int4_weight(5, 64, 32, symmetric=False)
        y = myq_kernels.int4_linear(x, packed, scales, zeros, 32)
    else:
        weight, scale = int8_weight(5, 64)
        y = getattr(myq_kernels, op)(x, weight, scale)
    assert y.shape == (0, 5) and y.dtype == x.dtype
    x3 = torch.randn(2, 0, 64)
    weight, scale = int8_weight(5, 64)
    assert myq_kernels.int8_linear(x3, weight, scale).shape == (2, 0, 5)


def test_pack_unpack_every_byte(backend, poisoned_outputs):
    every_byte = torch.arange(256, dtype=torch.uint8)
    q = reference.unpack_int4(every_byte)
    assert torch.equal(q[0::2], every_byte & 0xF) and torch.equal(q[1::2], every_byte >> 4)
    assert torch.equal(myq_kernels.unpack_int4(every_byte), q)
    assert torch.equal(myq_kernels.pack_int4(q), every_byte)


@pytest.mark.parametrize("shape", [(2,), (1, 2), (3, 34), (5, 4, 66), (257, 130)])
def test_pack_unpack_round_trip(backend, poisoned_outputs, shape):
    q = torch.randint(0, 16, shape, dtype=torch.uint8)
    packed = myq_kernels.pack_int4(q)
    assert packed.shape == (*shape[:-1], shape[-1] // 2) and packed.dtype == torch.uint8
    assert torch.equal(packed, reference.pack_int4(q))
    assert torch.equal(myq_kernels.unpack_int4(packed), q)


def test_pack_accepts_wider_integer_types(backend):
    q = torch.randint(0, 16, (4, 8), dtype=torch.int64)
    assert torch.equal(myq_kernels.unpack_int4(myq_kernels.pack_int4(q)), q.to(torch.uint8))


def test_select_backend_prefers_the_compiled_kernel(monkeypatch):
    monkeypatch.delenv("MYQ_BACKEND", raising=False)
    expected = "cpp" if myq_kernels.backends()["cpp"].available else "torch"
    assert myq_kernels.select_backend("int8_linear", torch.device("cpu")) == expected
    monkeypatch.setenv("MYQ_BACKEND", "torch")
    assert myq_kernels.select_backend("int8_linear", torch.device("cpu")) == "torch"
