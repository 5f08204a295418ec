"""Shared cases and checks for testing every backend of the ops against the reference.

test_ops.py (CPU backends), test_triton.py (Triton interpreter) and test_cuda.py (GPU) each
pick the backend and the shapes; the check_* functions here run one case on a device, so
the backends are held to the same checks.
"""
import torch

import myq_kernels
from myq_kernels import primitives, reference

INT8_OPS = ["int8_linear", "int8_linear_dynamic"]
LINEAR_OPS = INT8_OPS + ["int4_linear"]

# (batch shape of x, N, K): M = 1 and large, N = 1, K not a multiple of 16/32/64,
# several batch dims, and K large enough that accumulation order matters.
LINEAR_SHAPES = [
    ((1,), 1, 2),
    ((1,), 64, 64),
    ((1,), 257, 4096),  # one row of x on AVX-512: int8_linear reads weight rows one by one
    ((1,), 5, 4097),    # up to K = 4096 (4096 | 4097)
    ((1,), 9, 100),    # one row of x: whole 32-wide chunks of K and a tail (AVX2 row kernel)
    ((3,), 7, 30),     # int8 with bfloat16 x on AVX512-BF16: its vdpbf16ps gemv from M = 4 (3 | 4)
    ((4,), 40, 128),   # K % 32 == 0 on both sides of the AMX switch (M = 4 | 5)
    ((5,), 47, 160),
    ((5,), 33, 100),
    ((2, 3), 17, 258),
    ((2, 2, 2), 64, 96),
    ((2,), 15, 128),   # int8_linear on AMX: x's int8 digits need N >= 16 (N = 15 | 16)
    ((2,), 16, 128),
    ((32,), 20, 192),  # ... and with bfloat16 x, M <= 32; on AVX-512 VNNI from M = 33 (32 | 33)
    ((33,), 20, 192),
    ((12,), 20, 192),  # bfloat16 x on AVX512-BF16 without AMX: vdpbf16ps from M = 13 (12 | 13)
    ((13,), 20, 192),
    ((8,), 300, 1024),
    ((9,), 65, 200),
    ((33,), 129, 1000),
    ((130,), 96, 512),   # int8_linear's VNNI digits on short rows: beyond 128 rows only for
    ((128,), 96, 512),   # weights of 3 * 2^18 elements or more (128 | 130 rows, 96 | 800 x K)
    ((130,), 800, 1000),
    ((257,), 31, 384),
    ((64,), 33, 200),    # AVX2 gemv up to M = 64 where the weight is dequantized whole (64 | 65)
    ((65,), 33, 200),
    ((128,), 520, 2048),  # ... and up to 128 for int8 in per-thread tiles (> 4 MiB): 128 | 129;
                          # int8_linear's VNNI digits from K = 512 (384 above | 512), W8A8's
                          # from K = 2048 (1000 above | 2048)
    ((129,), 520, 2048),
    ((33,), 48, 2048),   # int8 products on AVX-512 VNNI without AMX (W8A8 from K = 2048,
                         # digits): product tiles from M = 33, N >= 16, K % 4 == 0, in pairs of
                         # 16-column tiles and a single one (48 = 32 + 16) ...
    ((33,), 15, 2048),   # ... the dot kernel for N < 16
    ((34,), 24, 2050),   # ... and for K % 4 != 0
    ((520,), 80, 96),    # bfloat16 x on the vdpbf16ps kernel: tasks of 512 rows x 32 columns
    ((600,), 80, 2048),  # float32 x's digits in VNNI / AMX product tiles: bands of 4 MB of
                         # digits (512 rows here), the last one short
]

# (batch shape, N, K, group_size): K = group for per-channel; groups not a multiple of 16.
INT4_SHAPES = [
    ((1,), 1, 64, 32),
    ((1,), 257, 4096, 128),
    ((1,), 511, 4096, 128),   # one row on AVX-512 VNNI: x as int8 digits (int4_gemv_digits) from
    ((1,), 512, 4096, 128),   # 2^21 weights (511 | 512 rows)
    ((1,), 2731, 768, 256),   # ... two of its 128-wide steps per group
    ((1,), 4097, 576, 96),    # ... steps spanning groups, a short last step (576 = 4.5 * 128)
    ((1,), 8192, 256, 32),    # ... four groups per step
    ((2,), 40, 256, 64),      # bfloat16 x on AVX512-BF16: its own GEMV, x in passes
                              # of up to 4 rows, to M = 12 (below: 12 | 13)
    ((3,), 7, 96, 32),
    ((2, 3), 17, 256, 64),
    ((8,), 48, 256, 32),      # AMX from M = 8 with bfloat16 x, 12 with float x (M = 11 | 12)
    ((11,), 48, 256, 32),     # ... and AVX2's float32 panels from M = 12 (kPanelMinM)
    ((12,), 48, 256, 32),     # float x on AMX: one k-step per group; bfloat16 x on
    ((13,), 48, 256, 32),     # AVX512-BF16 without AMX from M = 13 (M = 12 | 13)
    ((16,), 40, 1024, 512),   # a group spanning the AMX kernel's 256-wide K chunks
    ((5,), 33, 100, 100),
    ((4,), 48, 256, 64),      # AMX-INT8 digits from M = 5 with float32 / float16 x (M = 4 | 5)
    ((5,), 48, 256, 64),
    ((32,), 24, 128, 64),     # ... float16 x up to M = 32 (M = 32 | 33)
    ((33,), 24, 128, 64),
    ((9,), 65, 384, 128),
    ((33,), 40, 200, 40),
    ((130,), 96, 512, 128),
    ((257,), 31, 384, 384),
    ((64,), 24, 128, 64),     # AVX2 gemv up to M = 64 (M = 64 | 65)
    ((65,), 24, 128, 64),
    ((65,), 520, 2048, 128),  # per-thread tiles (dequantized weight > 4 MiB)
    ((520,), 80, 96, 32),     # bfloat16 x on the vdpbf16ps kernel: tasks of 512 rows x 32 columns
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# q shapes for pack / unpack: one byte, batch dims, rows not a multiple of a vector width.
PACK_SHAPES = [(2,), (1, 2), (3, 34), (5, 4, 66), (257, 130)]

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


def int8_dynamic_expected(x, weight, scale, bias):
    """As int8_expected for W8A8, whose bound is on the products of the int8-quantized tokens."""
    expected = reference.int8_linear_dynamic(x.double(), weight, scale.double(),
                                             None if bias is None else bias.double())
    q, row_scale = reference.quantize_per_token(x)
    magnitude = (q.double().abs() @ weight.double().abs().T) * row_scale.double().unsqueeze(-1) * scale.double()
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


def run_op(op, device, *args):
    """myq_kernels.<op>(*args) with the tensor arguments moved to `device`; the result, checked
    to come back on that device, is returned on the CPU for comparing with the reference."""
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    y = getattr(myq_kernels, op)(*args)
    assert y.device.type == torch.device(device).type, f"{op} returned a tensor on {y.device}, expected {device}"
    return y.cpu()


def check_int8_op(op, batch, n, k, dtype, with_bias, device="cpu"):
    """int8_linear or int8_linear_dynamic on one case, against the float64 reference."""
    x = make_x(batch, k, dtype, contiguous=k % 3 != 0)
    if x.numel() > k:
        x[..., 0, :] = 0.0  # an all-zero token: W8A8 must not divide by its zero scale
    weight, scale = int8_weight(n, k)
    bias = make_bias(n, with_bias)
    y = run_op(op, device, x, weight, scale, bias)
    expected = int8_expected if op == "int8_linear" else int8_dynamic_expected
    assert_linear_close(y, *expected(x, weight, scale, bias), dtype)


def check_int4_linear(batch, n, k, group_size, dtype, symmetric, device="cpu"):
    x = make_x(batch, k, dtype, contiguous=n % 2 == 1)
    packed, scales, zeros = int4_weight(n, k, group_size, symmetric)
    bias = make_bias(n, with_bias=symmetric)
    y = run_op("int4_linear", device, x, packed, scales, zeros, group_size, bias)
    assert_linear_close(y, *int4_expected(x, packed, scales, zeros, group_size, bias), dtype)


def check_params_in_other_dtypes(dtype, device="cpu", rows=4):
    """Scales, zero points and bias in `dtype` with float32 x: read in their own dtype."""
    x = torch.randn(rows, 64)
    weight, scale = int8_weight(8, 64)
    bias = torch.randn(8)
    scale, bias = scale.to(dtype), bias.to(dtype)
    y = run_op("int8_linear", device, x, weight, scale, bias)
    assert_linear_close(y, *int8_expected(x, weight, scale.float(), bias.float()), torch.float32)
    packed, scales, zeros = int4_weight(8, 64, 32, symmetric=False)
    scales, zeros = scales.to(dtype), zeros.to(dtype)
    y = run_op("int4_linear", device, x, packed, scales, zeros, 32, bias)
    assert_linear_close(y, *int4_expected(x, packed, scales.float(), zeros.float(), 32, bias.float()),
                        torch.float32)


def check_empty_batch(op, device="cpu"):
    """No rows of x (M = 0), with one or more batch dims: an empty result of x's dtype.
    The int8 ops also take K = 0: every dot product is empty and the result is the bias."""
    if op == "int4_linear":
        weights = [*int4_weight(5, 64, 32, symmetric=False), 32]
    else:
        weights = int8_weight(5, 64)
    for shape in ((0, 64), (2, 0, 64)):
        x = torch.randn(shape)
        y = run_op(op, device, x, *weights)
        assert y.shape == (*shape[:-1], 5) and y.dtype == x.dtype
    if op != "int4_linear":
        bias = torch.randn(5)
        for dtype in DTYPES:
            y = run_op(op, device, torch.randn(3, 0).to(dtype), torch.zeros(5, 0, dtype=torch.int8),
                       torch.ones(5), bias)
            assert y.dtype == dtype and torch.equal(y, bias.to(dtype).expand(3, 5))


def check_pack_unpack_every_byte(device="cpu"):
    every_byte = torch.arange(256, dtype=torch.uint8)
    q = reference.unpack_int4(every_byte)
    assert torch.equal(q[0::2], every_byte & 0xF) and torch.equal(q[1::2], every_byte >> 4)
    assert torch.equal(run_op("unpack_int4", device, every_byte), q)
    assert torch.equal(run_op("pack_int4", device, q), every_byte)


def check_pack_unpack_round_trip(shape, device="cpu"):
    q = torch.randint(0, 16, shape, dtype=torch.uint8)
    packed = run_op("pack_int4", device, q)
    assert packed.shape == (*shape[:-1], shape[-1] // 2) and packed.dtype == torch.uint8
    assert torch.equal(packed, reference.pack_int4(q))
    assert torch.equal(run_op("unpack_int4", device, packed), q)
    if q.numel() > 64:  # a view 2 bytes into its storage on the device: vector paths must fall back
        part = q.to(device).reshape(-1)[2:66]
        assert torch.equal(myq_kernels.pack_int4(part).cpu(), reference.pack_int4(part.cpu()))


def check_pack_accepts_wider_integer_types(device="cpu"):
    q = torch.randint(0, 16, (4, 8), dtype=torch.int64)
    assert torch.equal(run_op("unpack_int4", device, run_op("pack_int4", device, q)), q.to(torch.uint8))
