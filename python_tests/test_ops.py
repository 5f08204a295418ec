"""Every op on every CPU backend against the float64 reference."""
import pytest
import torch

import myq_kernels

from op_cases import (DTYPES, INT4_SHAPES, INT8_OPS, LINEAR_OPS, LINEAR_SHAPES, PACK_SHAPES, check_empty_batch,
                      check_int4_linear, check_int8_op, check_pack_accepts_wider_integer_types,
                      check_pack_unpack_every_byte, check_pack_unpack_round_trip, check_params_in_other_dtypes,
                      int8_weight)

CPU_BACKENDS = [name for name, b in myq_kernels.backends().items() if "cpu" in b.devices and name != "triton"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("MYQ_BACKEND", request.param)
    return request.param


def test_compiled_extension_is_loaded():
    """CI builds the extension; the cpp backend silently missing would test nothing."""
    cpp = myq_kernels.backends()["cpp"]
    assert cpp.available, cpp.reason


@pytest.mark.parametrize("op", INT8_OPS)
@pytest.mark.parametrize("batch,n,k", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_ops(backend, poisoned_outputs, op, batch, n, k, dtype, with_bias):
    check_int8_op(op, batch, n, k, dtype, with_bias)


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
    check_int4_linear(batch, n, k, group_size, dtype, symmetric)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scales_zeros_and_bias_in_other_dtypes(backend, dtype):
    check_params_in_other_dtypes(dtype)


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_empty_batch_gives_empty_result(backend, op):
    check_empty_batch(op)


def test_pack_unpack_every_byte(backend, poisoned_outputs):
    check_pack_unpack_every_byte()


@pytest.mark.parametrize("shape", PACK_SHAPES)
def test_pack_unpack_round_trip(backend, poisoned_outputs, shape):
    check_pack_unpack_round_trip(shape)


def test_pack_accepts_wider_integer_types(backend):
    check_pack_accepts_wider_integer_types()


def test_select_backend_prefers_the_compiled_kernel(monkeypatch):
    monkeypatch.delenv("MYQ_BACKEND", raising=False)
    expected = "cpp" if myq_kernels.backends()["cpp"].available else "torch"
    assert myq_kernels.select_backend("int8_linear", torch.device("cpu")) == expected
    monkeypatch.setenv("MYQ_BACKEND", "torch")
    assert myq_kernels.select_backend("int8_linear", torch.device("cpu")) == "torch"
