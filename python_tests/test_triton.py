"""The Triton kernels (myq_kernels/triton) against the float64 reference, on CPU tensors
through the Triton interpreter, called through the public ops with MYQ_BACKEND=triton.

Triton fixes at import time whether kernels are compiled or interpreted, so
TRITON_INTERPRET=1 must be set before triton is first imported. When this file runs in a
process that did not start with it (the main test suite), one test re-runs this file in
a subprocess with TRITON_INTERPRET=1 MYQ_BACKEND=triton; the rest of the suite is left
untouched. `.ci/cuda_checks.sh` runs it directly with those variables set. The same
cases run on a GPU in test_cuda.py.
"""
import os
import subprocess
import sys

import pytest
import torch

import myq_kernels
from myq_kernels import reference
from op_cases import (DTYPES, INT8_OPS, LINEAR_OPS, PACK_SHAPES, check_empty_batch, check_int4_linear, check_int8_op,
                      check_pack_accepts_wider_integer_types, check_pack_unpack_every_byte,
                      check_pack_unpack_round_trip, check_params_in_other_dtypes, int4_weight, int8_weight)

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))

# Kept small: the interpreter runs every program in numpy (a 32^3 dot is a few ms).
# (batch shape of x, N, K): M = 1, N = 1, K not a multiple of the 32-wide K block,
# several batch dims, more rows than one M block, K spanning many blocks.
INTERPRETER_LINEAR_SHAPES = [
    ((1,), 1, 2),
    ((1,), 64, 64),
    ((1,), 33, 520),
    ((3,), 7, 30),
    ((5,), 33, 100),
    ((2, 3), 17, 258),
    ((2, 2, 2), 64, 96),
    ((33,), 40, 72),
    ((70,), 31, 48),
]
# (batch shape, N, K, group_size): group sizes 32 / 64 / 128 / K, groups that are not a
# multiple of the K block (40, 100), K = group_size (one scale per channel).
INTERPRETER_INT4_SHAPES = [
    ((1,), 1, 64, 32),
    ((1,), 37, 256, 128),
    ((3,), 7, 96, 32),
    ((2, 3), 17, 256, 64),
    ((5,), 33, 100, 100),
    ((33,), 40, 200, 40),
    ((2, 9), 20, 384, 128),
    ((70,), 9, 64, 64),
]


if not IN_INTERPRETER:

    def test_triton_kernels_in_the_interpreter():
        """Runs this file in a subprocess with TRITON_INTERPRET=1 MYQ_BACKEND=triton."""
        pytest.importorskip("triton", reason="triton is not installed")
        env = dict(os.environ, TRITON_INTERPRET="1", MYQ_BACKEND="triton")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider",
             "--rootdir", os.path.dirname(HERE)],
            cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=1800)
        summary = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        print("interpreter run:", *summary)
        assert proc.returncode == 0, (
            f"Triton interpreter tests failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")

else:

    @pytest.fixture(autouse=True)
    def triton_backend(monkeypatch):
        monkeypatch.setenv("MYQ_BACKEND", "triton")

    def test_ops_route_to_the_triton_kernels(monkeypatch):
        """With MYQ_BACKEND=triton and the interpreter, the public ops call myq_kernels.triton."""
        import myq_kernels.triton as mt
        assert myq_kernels.select_backend("int8_linear", torch.device("cpu")) == "triton"
        x = torch.randn(2, 64)
        weight, scale = int8_weight(8, 64)
        packed, scales, zeros = int4_weight(8, 64, 32, symmetric=False)
        called = []
        for name in ("int8_linear", "int8_linear_dynamic", "int4_linear", "pack_int4", "unpack_int4"):
            original = getattr(mt, name)
            monkeypatch.setattr(mt, name, lambda *a, _o=original, _n=name: called.append(_n) or _o(*a))
        myq_kernels.int8_linear(x, weight, scale)
        myq_kernels.int8_linear_dynamic(x, weight, scale)
        myq_kernels.int4_linear(x, packed, scales, zeros, 32)
        myq_kernels.unpack_int4(myq_kernels.pack_int4(torch.randint(0, 16, (4, 8))))
        assert called == ["int8_linear", "int8_linear_dynamic", "int4_linear", "pack_int4", "unpack_int4"]

    @pytest.mark.parametrize("op", INT8_OPS)
    @pytest.mark.parametrize("batch,n,k", INTERPRETER_LINEAR_SHAPES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("with_bias", [False, True])
    def test_int8_ops(poisoned_outputs, op, batch, n, k, dtype, with_bias):
        check_int8_op(op, batch, n, k, dtype, with_bias)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_quantize_per_token_is_bit_exact(poisoned_outputs, dtype):
        """Same int8 codes and scales as the reference, ties (x / s = k + 0.5) included."""
        from myq_kernels.triton import quantize_per_token
        x = torch.randn(6, 77).to(dtype)
        x[1] = 0.0
        # row 2: max 127 -> s = 1 exactly, so x / s hits the .5 ties: round half to even
        x[2, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5])
        x[3, :3] = torch.tensor([-200.0, 200.0, 1e-3])
        q, s = quantize_per_token(x)
        q_ref, s_ref = reference.quantize_per_token(x)
        assert torch.equal(s, s_ref)
        assert torch.equal(q, q_ref)

    @pytest.mark.parametrize("batch,n,k,group_size", INTERPRETER_INT4_SHAPES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("symmetric", [False, True])
    def test_int4_linear(poisoned_outputs, batch, n, k, group_size, dtype, symmetric):
        check_int4_linear(batch, n, k, group_size, dtype, symmetric)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_scales_zeros_and_bias_in_other_dtypes(dtype):
        check_params_in_other_dtypes(dtype)

    @pytest.mark.parametrize("op", LINEAR_OPS)
    def test_empty_batch_gives_empty_result(op):
        check_empty_batch(op)

    def test_pack_unpack_every_byte(poisoned_outputs):
        check_pack_unpack_every_byte()

    @pytest.mark.parametrize("shape", PACK_SHAPES)
    def test_pack_unpack_round_trip(poisoned_outputs, shape):
        check_pack_unpack_round_trip(shape)

    def test_pack_accepts_wider_integer_types():
        check_pack_accepts_wider_integer_types()
