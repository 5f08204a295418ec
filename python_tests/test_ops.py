"""Every op on every CPU backend against the float64 reference."""
import pytest
import torch

import myq_kernels
from myq_kernels import ops, reference

from op_cases import (DTYPES, INT4_SHAPES, INT8_OPS, LINEAR_OPS, LINEAR_SHAPES, PACK_SHAPES, assert_linear_close,
                      check_empty_batch, check_int4_linear, check_int8_op, check_pack_accepts_wider_integer_types,
                      check_pack_unpack_every_byte, check_pack_unpack_round_trip, check_params_in_other_dtypes,
                      int4_expected, int4_weight, int8_expected, int8_weight, make_x)

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


# Rows of x on both sides of the digit paths' switches: AMX from one row, AVX-512 VNNI
# beyond 32 (float32 / float16 x).
@pytest.mark.parametrize("rows", [6, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_keeps_small_activations_next_to_outliers(backend, poisoned_outputs, dtype, rows):
    """Rows spanning 2^-20 .. 2^11 in magnitude, with the full int8 range (-128 included) in
    the weights: the digit paths scale each row of x to 8 * digits - 2 bits of its max, so too
    few digits would lose the small elements beyond the dtype's bound."""
    x = (torch.randn(rows, 256) * torch.exp2(torch.randint(-20, 4, (rows, 256)).float())).to(dtype)
    x[:, 7] = 2048.0
    weight = torch.randint(-128, 128, (48, 256), dtype=torch.int8)
    weight[:, :16] = -128
    scale = (torch.rand(48) + 0.5) / 128  # float16 results stay finite
    y = myq_kernels.int8_linear(x, weight, scale)
    assert_linear_close(y, *int8_expected(x, weight, scale, None), dtype)


@pytest.mark.parametrize("rows", [4, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_propagates_inf_and_nan(backend, dtype, rows):
    """A row holding inf or NaN gives what the float product gives (the digit split of x
    cannot represent them, so such a call takes a float path)."""
    x = torch.randn(rows, 128).to(dtype)
    x[1, 5] = float("inf")
    x[2, 9] = float("nan")
    weight, scale = int8_weight(32, 128)
    weight[3, 5] = 0  # inf * 0: NaN
    y = myq_kernels.int8_linear(x, weight, scale).double()
    expected = reference.int8_linear(x.double(), weight, scale.double(), None)
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y.isinf(), expected.isinf()) and torch.equal(y.isinf() & (y > 0), expected.isinf() & (expected > 0))
    finite = expected.isfinite()
    assert_linear_close(y[finite].to(dtype), expected[finite],
                        ((x.double().abs() @ weight.double().abs().T) * scale.double())[finite], dtype)


# Rows on both sides of the switches to the bfloat16 kernel (from 13) and to its 512-row tasks.
@pytest.mark.parametrize("rows", [4, 40, 520])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_linear_rounds_to_nearest(backend, dtype, rows):
    """A bfloat16 / float16 result is the float32 sum rounded to nearest, as torch rounds: a
    truncating conversion would stay within test_int8_ops' bound but miss about half of these."""
    x = torch.randn(rows, 256).to(dtype)
    weight, scale = int8_weight(96, 256)
    y = myq_kernels.int8_linear(x, weight, scale)
    expected, _ = int8_expected(x, weight, scale, None)
    matches = (y == expected.to(dtype)).double().mean().item()
    assert matches >= 0.99, f"only {matches:.1%} of the results are the exact sum rounded to nearest"


@pytest.mark.parametrize("rows", [2, 33])
def test_int8_linear_with_k_beyond_exact_int32_digit_sums(backend, rows):
    """K >= 2^17 would overflow the int32 digit sums: int8_linear takes a float path there."""
    k = 1 << 17
    x = torch.randn(rows, k)
    weight, scale = int8_weight(16, k)
    y = myq_kernels.int8_linear(x, weight, scale)
    assert_linear_close(y, *int8_expected(x, weight, scale, None), torch.float32)


@pytest.mark.parametrize("batch,n,k,group_size", INT4_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_linear(backend, poisoned_outputs, batch, n, k, group_size, dtype, symmetric):
    check_int4_linear(batch, n, k, group_size, dtype, symmetric)


# Rows of x beyond one thread's share of the GEMVs' preparation (65536 / K rows per thread).
@pytest.mark.parametrize("dtype,rows,k", [(torch.float32, 130, 512), (torch.bfloat16, 12, 8192)])
def test_int4_linear_prepares_x_in_row_blocks(backend, dtype, rows, k):
    """The int4 GEMVs' reordered x and group sums are prepared in row blocks split between the
    threads. No poisoned outputs here on purpose: NaN in an unwritten group sum would send the
    call to the float path kept for inf / NaN in x, hiding a block written in the wrong place."""
    x = torch.randn(rows, k).to(dtype)
    packed, scales, zeros = int4_weight(24, k, 128, symmetric=False)
    y = myq_kernels.int4_linear(x, packed, scales, zeros, 128)
    assert_linear_close(y, *int4_expected(x, packed, scales, zeros, 128, None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero", ["fractional", "beyond int8"])
@pytest.mark.parametrize("rows", [1, 2, 8])
def test_int4_linear_zero_points_int8_cannot_hold(backend, poisoned_outputs, dtype, zero, rows):
    """Zero points that are not integers, or that put q - zero outside int8, are valid: the
    AMX-INT8 path (exact int8 q - zero tiles) must hand them to a float path, and the GEMVs
    that subtract them at the end (sum of x times scale times zero) must keep them exact."""
    packed, scales, zeros = int4_weight(8192, 256, 64, symmetric=False)  # 2^21: the digits at M = 1
    zeros = zeros + 0.25 if zero == "fractional" else zeros + 150.0
    scales = scales / 20  # keeps float16 results finite with zero points near 150
    x = make_x((rows,), 256, dtype)
    y = myq_kernels.int4_linear(x, packed, scales, zeros, 64)
    assert_linear_close(y, *int4_expected(x, packed, scales, zeros, 64, None), dtype)


# One row (int4_gemv_digits on AVX-512 VNNI) and beyond the AMX-INT8 digits' switch (M = 5).
@pytest.mark.parametrize("rows", [1, 6])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [64, 128])
def test_int4_linear_keeps_small_activations_next_to_outliers(backend, poisoned_outputs, dtype, rows,
                                                              group_size):
    """As for int8_linear: rows spanning 2^-20 .. 2^11, and every code 0..15 in the weights, so
    that too few digits of x, or a digit sum that overflows, would show. The bound is on
    |x| @ ((q + |zero|) * scale): the GEMVs that take the zero points off at the end (AVX2,
    scalar, the digits) add two float32 sums of that size, sum x * q * s and sum x * zero * s."""
    x = (torch.randn(rows, 512) * torch.exp2(torch.randint(-20, 4, (rows, 512)).float())).to(dtype)
    x[:, 7] = 2048.0
    n = 4096  # 2^21 weights: the digits at M = 1
    packed, scales, zeros = int4_weight(n, 512, group_size, symmetric=False)
    q = torch.randint(0, 16, (n, 512), dtype=torch.uint8)
    q[:, :64] = 15
    packed = myq_kernels.pack_int4(q)
    scales = scales / 16  # float16 results stay finite
    y = myq_kernels.int4_linear(x, packed, scales, zeros, group_size)
    expected, _ = int4_expected(x, packed, scales, zeros, group_size, None)
    both_terms = (q.double() + zeros.double().abs().repeat_interleave(group_size, -1)) * \
        scales.double().repeat_interleave(group_size, -1)
    assert_linear_close(y, expected, x.double().abs() @ both_terms.T, dtype)


@pytest.mark.parametrize("rows", [1, 2, 6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_linear_propagates_inf_and_nan(backend, dtype, rows):
    """inf or NaN in x gives what the float product gives: the digits of x cannot hold them, and
    the GEMVs that take the zero points off at the end would turn inf - inf into NaN."""
    x = torch.randn(rows, 256).to(dtype)
    x[0, 5] = float("inf")
    x[-1, 9] = float("nan")
    packed, scales, zeros = int4_weight(8192, 256, 64, symmetric=False)  # 2^21: the digits at M = 1
    y = myq_kernels.int4_linear(x, packed, scales, zeros, 64).double()
    expected, magnitude = int4_expected(x, packed, scales, zeros, 64, None)
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y.isinf(), expected.isinf()) and torch.equal(y.isinf() & (y > 0), expected.isinf() & (expected > 0))
    finite = expected.isfinite()
    assert_linear_close(y[finite].to(dtype), expected[finite], magnitude[finite], dtype)


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


@pytest.mark.parametrize("k", [1000, 1040, 1041, 1536])
def test_w8a8_float32_matches_the_reference_bit_for_bit(backend, k):
    """W8A8's int32 sums are exact on every path, so float32 x gives the reference's float32
    result exactly. At M > 32 on AVX2 with K <= 1040 the sums run through MKL as float32 (each
    below 2^24): near-largest sums (every q at 127, w at 100..127 of either sign) test that
    bound; from K = 1041 the int8 kernel takes them (at K = 1536 such sums exceed 2^24)."""
    m, n = 40, 24
    x = torch.randn(m, k)
    x[:4] = 1.0  # rows whose q are all 127
    weight, scale = int8_weight(n, k)
    weight[:4] = torch.randint(100, 128, (4, k), dtype=torch.int8)
    weight[4:8] = -weight[:4]
    bias = torch.randn(n)
    y = myq_kernels.int8_linear_dynamic(x, weight, scale, bias)
    assert torch.equal(y, reference.int8_linear_dynamic(x, weight, scale, bias))


def test_calls_follow_a_change_of_myq_backend(monkeypatch):
    """The ops remember the function chosen per (op, device, MYQ_BACKEND): a later change of
    MYQ_BACKEND must take effect, and a forced backend that cannot run must still raise."""
    cpu = torch.device("cpu")
    monkeypatch.delenv("MYQ_BACKEND", raising=False)
    default = ops._route("int8_linear", cpu)
    if myq_kernels.backends()["cpp"].available:
        assert default is torch.ops.myq.int8_linear.default
    monkeypatch.setenv("MYQ_BACKEND", "torch")
    assert ops._route("int8_linear", cpu) is reference.int8_linear
    monkeypatch.setenv("MYQ_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="MYQ_BACKEND=triton cannot run on cpu"):
            ops._route("int8_linear", cpu)
    monkeypatch.delenv("MYQ_BACKEND")
    assert ops._route("int8_linear", cpu) is default


@pytest.mark.parametrize("rows", [1, 64])
def test_ops_accept_x_that_requires_grad(backend, rows):
    """Calibration code runs the quantized layers with autograd on; the kernels' inner matrix
    products must not go through autograd (at M = 64 the weights are dequantized for a GEMM)."""
    x = torch.randn(rows, 256, requires_grad=True)
    weight, scale = int8_weight(48, 256)
    bias = torch.randn(48)
    packed, scales, zeros = int4_weight(48, 256, 64, symmetric=False)
    with torch.no_grad():
        detached = x.detach()
        want8 = myq_kernels.int8_linear(detached, weight, scale, bias)
        want4 = myq_kernels.int4_linear(detached, packed, scales, zeros, 64, bias)
    assert torch.equal(myq_kernels.int8_linear(x, weight, scale, bias), want8)
    assert torch.equal(myq_kernels.int4_linear(x, packed, scales, zeros, 64, bias), want4)
