"""pytest-benchmark: each op beside F.linear (fp32, bf16) and torch's quantized CPU ops.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:shape,param:m
    MYQ_BENCH_SMOKE=1 pytest benchmarks/ --benchmark-disable   # CI: one small shape, seconds

Hot weights reuse one copy; cold weights cycle through > 1 GiB of copies per call.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from myq_kernels import bench
from conftest import SMOKE

SHAPES = [(256, 512)] if SMOKE else [bench.SQUARE, *bench.OTHER_SHAPES]
M_VALUES = [1, 32] if SMOKE else [1, 8, 128, 512]
COLD_BYTES = (16 << 20) if SMOKE else (1 << 30)

_weights = {}


def weights_for(shape):
    if shape not in _weights:
        _weights.clear()  # one shape's copies at a time keeps memory bounded
        _weights[shape] = bench.Weights(*shape, COLD_BYTES)
    return _weights[shape]


def _run(benchmark, fn, copies):
    cycle = itertools.cycle(copies)
    benchmark.pedantic(lambda: fn(*next(cycle)), rounds=3 if SMOKE else 20, warmup_rounds=1, iterations=1)


CASES = [  # (name, dtype, weight kind, fn(x, *weights))
    ("F.linear", "fp32", "fp32", lambda x, w: F.linear(x.float(), w)),
    ("F.linear", "bf16", "bf16", lambda x, w: F.linear(x, w)),
    ("myq.int8_linear", "fp32", "int8", bench.OURS["int8_linear"][1]),
    ("myq.int8_linear", "bf16", "int8", bench.OURS["int8_linear"][1]),
    ("torch._weight_int8pack_mm", "bf16", "torch_int8pack", bench.TORCH_QUANTIZED["int8_linear"][2]),
    ("myq.int4_linear", "fp32", "int4", bench.OURS["int4_linear"][1]),
    ("myq.int4_linear", "bf16", "int4", bench.OURS["int4_linear"][1]),
    ("torch._weight_int4pack_mm", "bf16", "torch_int4pack", bench.TORCH_QUANTIZED["int4_linear"][2]),
    ("myq.int8_linear_dynamic", "fp32", "int8", bench.OURS["int8_linear_dynamic"][1]),
    ("torch W8A8 (_int_mm)", "fp32", "int8", bench._torch_w8a8),
]


def _params():
    for shape, m, case in itertools.product(SHAPES, M_VALUES, CASES):
        if case[0] == "torch W8A8 (_int_mm)" and m <= 16:
            continue  # torch._int_mm on CPU needs M > 16
        # compute-bound cases time the same with hot and cold weights
        for state in ("cold", "hot") if m <= bench.MEMORY_BOUND_MAX_M else ("cold",):
            yield pytest.param(shape, m, *case, state, id=f"{shape[0]}x{shape[1]}-M{m}-{case[0]}-{case[1]}-{state}")


@pytest.mark.parametrize("shape,m,name,dtype,kind,fn,weights_state", list(_params()))
def test_linear(benchmark, shape, m, name, dtype, kind, fn, weights_state):
    weights = weights_for(shape)
    x = torch.randn(m, shape[1]).to(bench.DTYPES[dtype])
    benchmark.group = f"{shape[0]}x{shape[1]} M={m} {weights_state}"
    _run(benchmark, lambda *w: fn(x, *w), weights.get(kind, weights_state == "cold"))
