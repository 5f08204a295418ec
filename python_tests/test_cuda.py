"""The CUDA kernels (compiled extension, MYQ_BACKEND=cpp) and the Triton kernels compiled
for the GPU (MYQ_BACKEND=triton) against the float64 reference, on CUDA tensors.

Skipped, with the reason, when no GPU is visible: the one legitimate skip (the CUDA code is
compile-checked without a GPU by .ci/cuda_checks.sh). On a GPU, a CUDA backend that is not
available (extension built without CUDA, triton missing) fails the tests instead of
silently testing nothing.
"""
import pytest
import torch

import myq_kernels
from myq_kernels import reference
from op_cases import (DTYPES, INT4_SHAPES, INT8_OPS, LINEAR_OPS, LINEAR_SHAPES, PACK_SHAPES, assert_linear_close,
                      check_empty_batch, check_int4_linear, check_int8_op, check_pack_accepts_wider_integer_types,
                      check_pack_unpack_every_byte, check_pack_unpack_round_trip, check_params_in_other_dtypes,
                      int4_expected, int4_weight, int8_weight)

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is False)", allow_module_level=True)

CUDA = torch.device("cuda")

# Shapes that take each CUDA code path: GEMV (M <= 4), small-batch tensor-core tiles (M <= 16),
# mid and large tiles, K % 32 != 0 (SIMT fallback; W8A8 pads K), N not a multiple of any tile.
GPU_LINEAR_SHAPES = LINEAR_SHAPES + [
    ((4,), 1000, 4096),
    ((16,), 520, 2048),
    ((3, 5), 136, 1024),
    ((64,), 256, 512),
    ((100,), 1000, 2048),
    ((2, 300), 384, 1536),
]
GPU_INT4_SHAPES = INT4_SHAPES + [
    ((2,), 1000, 4096, 128),
    ((16,), 520, 2048, 32),
    ((3, 5), 136, 1024, 64),
    ((64,), 256, 512, 512),
    ((100,), 1000, 2048, 128),
    ((2, 300), 384, 1536, 48),
]


@pytest.fixture(params=["cpp", "triton"])
def backend(request, monkeypatch):
    monkeypatch.setenv("MYQ_BACKEND", request.param)
    return request.param


def cuda(*tensors):
    return [None if t is None else t.to(CUDA) for t in tensors]


def test_cuda_backends_available():
    cpp, triton = myq_kernels.backends()["cpp"], myq_kernels.backends()["triton"]
    assert cpp.available and "cuda" in cpp.devices, cpp.reason
    assert triton.available and "cuda" in triton.devices, triton.reason
    for op in myq_kernels.ops.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"myq::{op}", "CUDA"), op


@pytest.mark.parametrize("op", INT8_OPS)
@pytest.mark.parametrize("batch,n,k", GPU_LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_ops(backend, poisoned_outputs, op, batch, n, k, dtype, with_bias):
    check_int8_op(op, batch, n, k, dtype, with_bias, CUDA)


@pytest.mark.parametrize("batch,n,k,group_size", GPU_INT4_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_linear(backend, poisoned_outputs, batch, n, k, group_size, dtype, symmetric):
    check_int4_linear(batch, n, k, group_size, dtype, symmetric, CUDA)


@pytest.mark.parametrize("op", ["int8_linear", "int8_linear_dynamic", "int4_linear"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_misaligned_x_view(backend, op, dtype):
    """x starting 2 bytes into its storage: the vectorized paths must not assume alignment."""
    k = 256
    x = torch.randn(7, k + 1, device=CUDA).to(dtype)[:, 1:]  # sliced on the GPU: .to(CUDA) would copy it aligned
    if op == "int4_linear":
        packed, scales, zeros = int4_weight(40, k, 64, symmetric=False)
        y = myq_kernels.int4_linear(x, *cuda(packed, scales, zeros), 64)
        assert_linear_close(y.cpu(), *int4_expected(x.cpu(), packed, scales, zeros, 64, None), dtype)
    else:
        weight, scale = int8_weight(40, k)
        y = getattr(myq_kernels, op)(x, *cuda(weight, scale))
        expected = getattr(reference, op)(x.cpu().double(), weight, scale.double())
        assert torch.allclose(y.cpu().double(), expected, rtol=2e-2, atol=5e-2 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_scales_zeros_and_bias_in_other_dtypes(backend, dtype):
    check_params_in_other_dtypes(dtype, CUDA, rows=20)  # 20 rows: the tensor-core tiles, past the GEMV


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_empty_batch_and_empty_k(backend, op):
    check_empty_batch(op, CUDA)


def test_pack_unpack_every_byte(backend, poisoned_outputs):
    check_pack_unpack_every_byte(CUDA)


@pytest.mark.parametrize("shape", PACK_SHAPES + [(1000, 4096)])
def test_pack_unpack_round_trip(backend, poisoned_outputs, shape):
    check_pack_unpack_round_trip(shape, CUDA)


def test_pack_accepts_wider_integer_types(backend):
    check_pack_accepts_wider_integer_types(CUDA)


def test_ops_inside_torch_compile_on_cuda(monkeypatch):
    """The ops as registered CUDA kernels (compiled extension, else Triton registered for
    CUDA) are opaque custom ops inside torch.compile: no graph breaks."""
    monkeypatch.delenv("MYQ_BACKEND", raising=False)
    weight, scale = cuda(*int8_weight(64, 256))
    packed, scales, zeros = cuda(*int4_weight(64, 256, 64, symmetric=False))

    def layer(x):
        y = myq_kernels.int8_linear(x, weight, scale)
        y = y + myq_kernels.int8_linear_dynamic(x, weight, scale)
        return y + myq_kernels.int4_linear(x, packed, scales, zeros, 64)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(8, 256, device=CUDA, dtype=torch.float16)
    torch.testing.assert_close(compiled(x), layer(x))
