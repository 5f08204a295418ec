"""torch.library.opcheck on every op (schema, fake function, autograd registration, AOT
dispatch), and the ops inside torch.compile with fullgraph=True (no graph breaks)."""
import pytest
import torch

import myq_kernels
from op_cases import int4_weight, int8_weight


def _samples():
    x = torch.randn(3, 5, 40)
    weight, scale = int8_weight(6, 40)
    bias = torch.randn(6)
    packed, scales, zeros = int4_weight(6, 40, 20, symmetric=False)
    q = torch.randint(0, 16, (6, 40), dtype=torch.uint8)
    return {
        "int8_linear": [(x, weight, scale, bias), (x[0], weight, scale, None),
                        (x.bfloat16(), weight, scale, bias)],
        "int8_linear_dynamic": [(x, weight, scale, bias), (x[0].half(), weight, scale, None)],
        "int4_linear": [(x, packed, scales, zeros, 20, bias), (x[0], packed, scales, None, 40 // 2, None),
                        (x.bfloat16(), packed, scales, zeros, 20, None)],
        "pack_int4": [(q,), (q[:1],)],
        "unpack_int4": [(packed,)],
        "llm_int8_linear": [(x * 4, weight, scale, bias, 6.0), (x[0].bfloat16() * 4, weight, scale, None, 3.0)],
    }


@pytest.mark.parametrize("op", [*myq_kernels.ops.SCHEMAS, *myq_kernels.ops.COMPOSITE_SCHEMAS])
def test_opcheck(op):
    for args in _samples()[op]:
        torch.library.opcheck(getattr(torch.ops.myq, op).default, args)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_ops_compile_without_graph_breaks(backend, monkeypatch):
    monkeypatch.setenv("MYQ_BACKEND", backend)
    weight, scale = int8_weight(6, 40)
    packed, scales, zeros = int4_weight(6, 40, 20, symmetric=False)

    def layer(x):
        y = myq_kernels.int8_linear(x, weight, scale)
        y = y + myq_kernels.int8_linear_dynamic(x, weight, scale)
        y = y + myq_kernels.llm_int8_linear(x, weight, scale)
        return y + myq_kernels.int4_linear(x, packed, scales, zeros, 20)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    for m in (1, 7):
        x = torch.randn(m, 40)
        torch.testing.assert_close(compiled(x), layer(x))
