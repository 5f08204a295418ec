"""QuantizedLinear: every scheme against the ops and the float layer; dtypes, Conv1D, compile, errors."""
import importlib.util

import pytest
import torch
from torch import nn

from myq_kernels import ops, reference
from myq_kernels.nn import SCHEMES, QuantizedLinear

SCHEME_ARGS = [("w8a16", {}), ("w8a8", {}), ("w4a16", {"group_size": 64}),
               ("w4a16", {"group_size": 64, "symmetric": True}), ("w4a16", {"group_size": 256})]
IDS = ["w8a16", "w8a8", "w4a16-g64", "w4a16-g64-sym", "w4a16-perchannel"]


def _linear(k=256, n=96, bias=True):
    return nn.Linear(k, n, bias=bias)


def _expected(q, x):
    """What the scheme's op gives, computed by the pure-PyTorch reference."""
    if q.scheme == "w8a16":
        return reference.int8_linear(x, q.weight, q.weight_scale, q.bias)
    if q.scheme == "w8a8":
        return reference.int8_linear_dynamic(x, q.weight, q.weight_scale, q.bias)
    return reference.int4_linear(x, q.weight_packed, q.weight_scale, q.weight_zero, q.group_size, q.bias)


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS, ids=IDS)
def test_forward_matches_reference_and_float_layer(scheme, kw):
    lin = _linear()
    q = QuantizedLinear.from_linear(lin, scheme=scheme, **kw)
    x = torch.randn(2, 3, 256)
    y = q(x)
    assert y.shape == (2, 3, 96) and y.dtype == torch.float32
    torch.testing.assert_close(y, _expected(q, x), rtol=1e-4, atol=1e-4)
    # close to the float layer: relative error of the output
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < (0.02 if scheme != "w4a16" else 0.15), rel


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS, ids=IDS)
def test_buffers_not_parameters(scheme, kw):
    q = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    assert list(q.parameters()) == []
    buffers = dict(q.named_buffers())
    assert buffers["bias"].dtype == torch.float32
    if scheme.startswith("w8"):
        assert buffers["weight"].dtype == torch.int8 and buffers["weight"].shape == (96, 256)
        assert buffers["weight_scale"].shape == (96,)
    else:
        g = kw["group_size"]
        assert buffers["weight_packed"].dtype == torch.uint8 and buffers["weight_packed"].shape == (96, 128)
        assert buffers["weight_scale"].shape == (96, 256 // g)
        assert ("weight_zero" in buffers) == (not kw.get("symmetric", False))
    assert all(b.dtype == torch.float32 for n, b in buffers.items() if n.startswith("weight_s")
               or n.startswith("weight_z"))


def test_repr_names_scheme_features_group_size():
    q = QuantizedLinear.from_linear(_linear(), scheme="w4a16", group_size=64, symmetric=True)
    text = repr(q)
    for part in ("in_features=256", "out_features=96", "scheme=w4a16", "group_size=64", "symmetric=True"):
        assert part in text, text
    assert "scheme=w8a8" in repr(QuantizedLinear.from_linear(_linear(), scheme="w8a8"))


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS, ids=IDS)
def test_dequantize_returns_float_linear(scheme, kw):
    q = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    lin = q.dequantize()
    assert type(lin) is nn.Linear and lin.weight.dtype == torch.float32
    x = torch.randn(4, 256)
    if scheme == "w8a8":  # activations are quantized too: compare the weight path only
        torch.testing.assert_close(lin.weight, q.weight.float() * q.weight_scale[:, None])
    else:
        torch.testing.assert_close(lin(x), q(x), rtol=1e-4, atol=1e-4)
    assert q.dequantize(dtype=torch.bfloat16).weight.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS[:3], ids=IDS[:3])
def test_half_inputs_return_their_dtype(scheme, kw, dtype):
    q = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    x = torch.randn(5, 256)
    y = q(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), q(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS[:3], ids=IDS[:3])
def test_bf16_layer_keeps_float32_scales(scheme, kw):
    lin = _linear().to(torch.bfloat16)
    q = QuantizedLinear.from_linear(lin, scheme=scheme, **kw)
    assert q.bias.dtype == torch.bfloat16 and q.weight_scale.dtype == torch.float32
    q2 = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    scale = q2.weight_scale.clone()
    q2.to(torch.bfloat16)  # model.to(bf16): bias follows, scales/zeros stay float32 and exact
    assert q2.bias.dtype == torch.bfloat16 and q2.weight_scale.dtype == torch.float32
    assert torch.equal(q2.weight_scale, scale)
    y = q2(torch.randn(3, 256, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_no_bias_and_1d_input():
    q = QuantizedLinear.from_linear(_linear(bias=False), scheme="w8a16")
    assert q.bias is None and "bias=False" in repr(q)
    x = torch.randn(256)
    assert q(x).shape == (96,)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS[:3], ids=IDS[:3])
def test_conv1d_is_quantized_like_the_transposed_linear(scheme, kw):
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(96, 256)  # nf=out, nx=in; weight [in, out]
    nn.init.normal_(conv.weight, std=0.02)
    nn.init.normal_(conv.bias, std=0.02)
    lin = nn.Linear(256, 96)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    qc = QuantizedLinear.from_linear(conv, scheme=scheme, **kw)
    ql = QuantizedLinear.from_linear(lin, scheme=scheme, **kw)
    assert (qc.in_features, qc.out_features) == (256, 96)
    x = torch.randn(2, 7, 256)
    assert torch.equal(qc(x), ql(x))
    rel = ((qc(x) - conv(x)).norm() / conv(x).norm()).item()
    assert rel < (0.02 if scheme != "w4a16" else 0.15)


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS[:3], ids=IDS[:3])
def test_state_dict_loads_into_empty_module(scheme, kw):
    q = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    empty = QuantizedLinear(256, 96, bias=True, scheme=scheme, **kw)
    empty.load_state_dict(q.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(empty(x), q(x))


@pytest.mark.parametrize("scheme,kw", SCHEME_ARGS[:3], ids=IDS[:3])
def test_torch_compile_fullgraph_no_graph_breaks(scheme, kw):
    torch._dynamo.reset()
    q = QuantizedLinear.from_linear(_linear(), scheme=scheme, **kw)
    x = torch.randn(4, 256)
    explanation = torch._dynamo.explain(q)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(q, fullgraph=True)
    torch.testing.assert_close(compiled(x), q(x), rtol=1e-5, atol=1e-5)


def test_inference_mode():
    q = QuantizedLinear.from_linear(_linear(), scheme="w4a16", group_size=128)
    with torch.inference_mode():
        y = q(torch.randn(2, 256))
    assert y.shape == (2, 96)


def test_scheme_registry_is_extensible():
    assert {"w8a16", "w8a8", "w4a16"} <= set(SCHEMES)
    for spec in SCHEMES.values():
        assert callable(spec.quantize) and callable(spec.forward) and callable(spec.layout)


# ---- bad arguments ----------------------------------------------------------------------------

def test_unknown_scheme_names_the_argument():
    with pytest.raises(ValueError, match=r"scheme must be one of .*w8a16.*'int3'"):
        QuantizedLinear.from_linear(_linear(), scheme="int3")
    with pytest.raises(ValueError, match="scheme"):
        QuantizedLinear(256, 96, scheme="W9A9")


@pytest.mark.parametrize("group_size,error,match", [
    (100, ValueError, r"group_size \(100\) must divide in_features \(256\)"),
    (0, ValueError, "group_size must be a positive even number"),
    (-64, ValueError, "group_size must be a positive even number"),
    (33, ValueError, "group_size must be a positive even number"),
    (64.0, TypeError, "group_size must be an int"),
    (True, TypeError, "group_size must be an int"),
])
def test_bad_group_size_names_the_argument(group_size, error, match):
    with pytest.raises(error, match=match):
        QuantizedLinear.from_linear(_linear(), scheme="w4a16", group_size=group_size)


def test_odd_in_features_for_int4():
    with pytest.raises(ValueError, match="in_features"):
        QuantizedLinear.from_linear(nn.Linear(255, 8), scheme="w4a16", group_size=255)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D"):
        QuantizedLinear.from_linear(nn.Conv2d(3, 3, 3))


def test_ops_are_what_forward_calls(monkeypatch):
    calls = []
    real = ops.int8_linear_dynamic

    def spy(*args):
        calls.append("int8_linear_dynamic")
        return real(*args)

    monkeypatch.setattr(ops, "int8_linear_dynamic", spy)
    QuantizedLinear.from_linear(_linear(), scheme="w8a8")(torch.randn(2, 256))
    assert calls == ["int8_linear_dynamic"]
