"""Bad input raises a clear exception naming the argument, on every path."""
import argparse

import pytest
import torch

import myq_kernels
from myq_kernels.bench import parse_dtypes, parse_shapes
from op_cases import int4_weight, int8_weight


@pytest.fixture
def int8_args():
    weight, scale = int8_weight(6, 32)
    return torch.randn(3, 32), weight, scale, torch.randn(6)


@pytest.fixture
def int4_args():
    packed, scales, zeros = int4_weight(6, 64, 32, symmetric=False)
    return torch.randn(3, 64), packed, scales, zeros


@pytest.mark.parametrize("op", ["int8_linear", "int8_linear_dynamic"])
@pytest.mark.parametrize("change,error,words", [
    (lambda a: (a[0], a[1].float(), *a[2:]), TypeError, "weight must be int8"),
    (lambda a: (a[0].to(torch.int8), *a[1:]), TypeError, "x must be float32, bfloat16 or float16"),
    (lambda a: (a[0].double(), *a[1:]), TypeError, "x must be"),
    (lambda a: (torch.randn(3, 31), *a[1:]), ValueError, "x.shape[-1] (31) must equal weight.shape[1] (K=32)"),
    (lambda a: (a[0], a[1], a[2][:5], a[3]), ValueError, "scale must have shape [6]"),
    (lambda a: (a[0], a[1], a[2].to(torch.int32), a[3]), TypeError, "scale must be"),
    (lambda a: (a[0], a[1], a[2], a[3][:4]), ValueError, "bias must have shape [6]"),
    (lambda a: (a[0], a[1][0], a[2], a[3]), ValueError, "weight must be 2-D"),
    (lambda a: (torch.tensor(1.0), *a[1:]), ValueError, "x must have at least one dimension"),
    (lambda a: (a[0].numpy(), *a[1:]), TypeError, "x must be a torch.Tensor"),
    (lambda a: (a[0].to("meta"), *a[1:]), ValueError, "one device"),
])
def test_int8_bad_arguments(op, int8_args, change, error, words):
    with pytest.raises(error) as info:
        getattr(myq_kernels, op)(*change(int8_args))
    assert words in str(info.value)


@pytest.mark.parametrize("change,error,words", [
    (lambda x, p, s, z, g: (x, p.to(torch.int8), s, z, g), TypeError, "packed must be uint8"),
    (lambda x, p, s, z, g: (x[:, :63], p, s, z, g), ValueError, "must be even"),
    (lambda x, p, s, z, g: (x[:, :62], p, s, z, g), ValueError, "packed.shape[1] (32) must equal K // 2 = 31"),
    (lambda x, p, s, z, g: (x, p, s, z, 24), ValueError, "group_size (24) must be a positive even divisor of K (64)"),
    (lambda x, p, s, z, g: (x, p, s, z, 0), ValueError, "group_size (0)"),
    (lambda x, p, s, z, g: (x, p, s, z, 32.0), TypeError, "group_size must be an int"),
    (lambda x, p, s, z, g: (x, p, s, z, 64), ValueError, "scales must have shape [6, 1]"),
    (lambda x, p, s, z, g: (x, p, s, z[:, :1], g), ValueError, "zeros must have shape [6, 2]"),
    (lambda x, p, s, z, g: (x, p, s.to(torch.uint8), z, g), TypeError, "scales must be"),
    (lambda x, p, s, z, g: (x.to(torch.int8), p, s, z, g), TypeError, "x must be"),
])
def test_int4_bad_arguments(int4_args, change, error, words):
    with pytest.raises(error) as info:
        myq_kernels.int4_linear(*change(*int4_args, 32))
    assert words in str(info.value)


@pytest.mark.parametrize("q,error,words", [
    (torch.zeros(3, 5, dtype=torch.uint8), ValueError, "must be even"),
    (torch.full((2, 4), 16, dtype=torch.uint8), ValueError, "values in 0..15"),
    (torch.full((2, 4), -1, dtype=torch.int8), ValueError, "values in 0..15"),
    (torch.zeros(2, 4), TypeError, "q must be an integer tensor"),
])
def test_pack_bad_arguments(q, error, words):
    with pytest.raises(error) as info:
        myq_kernels.pack_int4(q)
    assert words in str(info.value)


def test_unpack_bad_arguments():
    with pytest.raises(TypeError, match="packed must be uint8"):
        myq_kernels.unpack_int4(torch.zeros(4, dtype=torch.int8))


def test_bad_backend_name(monkeypatch, int8_args):
    monkeypatch.setenv("MYQ_BACKEND", "cuda_please")
    with pytest.raises(ValueError, match="MYQ_BACKEND must be one of cpp, triton, torch"):
        myq_kernels.int8_linear(*int8_args)


def test_triton_forced_without_gpu_or_interpreter(monkeypatch, int8_args):
    monkeypatch.setenv("MYQ_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Triton can run")
    with pytest.raises(RuntimeError, match="MYQ_BACKEND=triton cannot run on cpu"):
        myq_kernels.int8_linear(*int8_args)


def test_direct_torch_ops_call_checks_too(int8_args):
    """torch.ops.myq.* bypasses ops.py; the compiled kernels must still refuse, not crash."""
    x, weight, scale, bias = int8_args
    with pytest.raises(RuntimeError):
        torch.ops.myq.int8_linear(x, weight, scale[:2], bias)
    with pytest.raises(RuntimeError):
        torch.ops.myq.int8_linear(torch.randn(3, 31), weight, scale, bias)


@pytest.mark.parametrize("text", ["12x3", "1536", "0x64", "ax64", "64x-2"])
def test_bench_shapes_must_be_n_by_even_k(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not N x K with positive N and even K"):
        parse_shapes(text)


def test_bench_shapes_parse():
    assert parse_shapes("4096x4096, 576x1536") == [(4096, 4096), (576, 1536)]


@pytest.mark.parametrize("text", ["fp8", "float", "fp32,int8", ""])
def test_bench_dtypes_must_be_known(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not an activation dtype; use fp32, bf16 or fp16"):
        parse_dtypes(text)


def test_bench_dtypes_take_torch_names_too():
    assert parse_dtypes("float32, BF16,float16") == ("fp32", "bf16", "fp16")
