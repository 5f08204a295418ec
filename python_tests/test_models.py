"""quantize_model, footprint, and real models: SmolLM2-135M, all-MiniLM-L6-v2, random GPT-2 (Conv1D)."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import myq_kernels as myq
from myq_kernels import eval as ev
from myq_kernels.model import linear_weight_bytes, plan_quantization
from myq_kernels.nn import QuantizedLinear

import model_assets as A

SCHEMES = ("w8a16", "w8a8", "w4a16")


class Toy(nn.Module):
    """Embedding, two blocks, a head tied to the embedding, and one module registered twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"fc1": nn.Linear(64, 128), "fc2": nn.Linear(128, 64)}) for _ in range(2))
        self.shared = nn.Linear(64, 64)
        self.alias = self.shared
        self.lm_head = nn.Linear(64, 100, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block["fc2"](torch.relu(block["fc1"](h)))
        h = self.alias(self.shared(h))
        return self.lm_head(h)


def _quantized_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantizedLinear))


# ---- quantize_model -----------------------------------------------------------------------------

def test_quantize_model_replaces_in_place_and_returns_model():
    model = Toy()
    ids = torch.randint(0, 100, (2, 9))
    before = model(ids)
    out = myq.quantize_model(model, scheme="w8a16")
    assert out is model
    assert _quantized_names(model) == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "shared"]
    assert model.alias is model.shared  # one module under two names: replaced once, everywhere
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    after = model(ids)
    assert ((after - before).norm() / before.norm()).item() < 0.02


def test_tied_weight_left_alone_even_when_not_excluded():
    model = Toy()
    myq.quantize_model(model, scheme="w4a16", group_size=64, exclude=())
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    assert "tied" in model._myq_skipped["lm_head"]


def test_exclude_exact_names_and_patterns():
    model = myq.quantize_model(Toy(), scheme="w8a8", exclude=("blocks.0.*", "shared", "lm_head"))
    assert _quantized_names(model) == ["blocks.1.fc1", "blocks.1.fc2"]
    model = myq.quantize_model(Toy(), scheme="w8a8", exclude=("blocks.1",))  # a parent excludes its children
    assert _quantized_names(model) == ["blocks.0.fc1", "blocks.0.fc2", "shared"]
    model = myq.quantize_model(Toy(), scheme="w8a8", exclude="*fc2")
    assert _quantized_names(model) == ["blocks.0.fc1", "blocks.1.fc1", "shared"]


def test_per_layer_schemes_dict_and_callable():
    model = myq.quantize_model(Toy(), scheme={
        "blocks.0.*": "w4a16",
        "blocks.1.fc1": {"scheme": "w8a8"},
        "blocks.1.fc2": None,
        "shared": {"scheme": "w4a16", "group_size": 32, "symmetric": True},
    }, group_size=64)
    got = {n: m.config() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert got == {
        "blocks.0.fc1": {"scheme": "w4a16", "group_size": 64, "symmetric": False},
        "blocks.0.fc2": {"scheme": "w4a16", "group_size": 64, "symmetric": False},
        "blocks.1.fc1": {"scheme": "w8a8"},
        "shared": {"scheme": "w4a16", "group_size": 32, "symmetric": True},
    }
    model = myq.quantize_model(Toy(), scheme=lambda name: "w8a16" if name.endswith("fc1") else None)
    assert _quantized_names(model) == ["blocks.0.fc1", "blocks.1.fc1"]


def test_group_size_fits_layers_it_does_not_divide():
    model = nn.Sequential(nn.Linear(576, 64), nn.Linear(64, 64))
    plan, _ = plan_quantization(model, scheme="w4a16", group_size=128)
    assert plan["0"]["group_size"] == 96 and plan["1"]["group_size"] == 64
    with pytest.raises(ValueError, match=r"group_size \(128\) must divide in_features \(576\)"):
        myq.quantize_model(nn.Sequential(nn.Linear(576, 64)), scheme="w4a16", group_size=128, fit_group=False)


def test_quantize_model_bad_arguments():
    with pytest.raises(ValueError, match="scheme must be one of"):
        myq.quantize_model(Toy(), scheme="int2")
    with pytest.raises(ValueError, match="scheme must be one of"):
        myq.quantize_model(Toy(), scheme={"shared": "nope"})
    with pytest.raises(ValueError, match="group_size must be a positive even number"):
        myq.quantize_model(Toy(), scheme="w4a16", group_size=0)
    with pytest.raises(TypeError, match="group_size must be an int"):
        myq.quantize_model(Toy(), scheme="w4a16", group_size="128")
    with pytest.raises(TypeError, match="exclude"):
        myq.quantize_model(Toy(), exclude=(3,))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        myq.quantize_model("model")
    with pytest.raises(ValueError, match="per-layer options"):
        myq.quantize_model(Toy(), scheme={"shared": {"scheme": "w8a16", "bits": 3}})


# ---- footprint ------------------------------------------------------------------------------------

def test_footprint_counts_parameters_buffers_and_shared_once():
    model = Toy()
    unique = {id(p): p for p in model.parameters()}
    assert myq.get_memory_footprint(model) == sum(p.numel() * 4 for p in unique.values())
    model.register_buffer("stats", torch.zeros(10, dtype=torch.float64))
    assert myq.get_memory_footprint(model) == sum(p.numel() * 4 for p in unique.values()) + 80
    sizes = myq.module_sizes(model)
    assert sum(sizes.values()) == myq.get_memory_footprint(model)
    assert sizes["lm_head"] == 0  # its weight is the embedding's, counted there
    totals = myq.module_sizes(model, recurse=True)
    assert totals[""] == myq.get_memory_footprint(model)
    assert totals["blocks"] == totals["blocks.0"] + totals["blocks.1"]


@pytest.mark.parametrize("scheme,kw,low,high", [
    ("w8a16", {}, 0.25, 0.27),
    ("w8a8", {}, 0.25, 0.27),
    ("w4a16", {"group_size": 128}, 0.13, 0.15),
    ("w4a16", {"group_size": 128, "symmetric": True}, 0.13, 0.15),
])
def test_linear_footprint_ratios(scheme, kw, low, high):
    lin = nn.Linear(1024, 512)
    q = QuantizedLinear.from_linear(lin, scheme=scheme, **kw)
    ratio = myq.get_memory_footprint(q) / myq.get_memory_footprint(lin)
    assert low <= ratio <= high, ratio
    if scheme == "w4a16":  # packed int4 counted at its real size: K // 2 bytes per row
        assert q.weight_packed.numel() * q.weight_packed.element_size() == 512 * 512


# ---- GPT-2 (Conv1D) -------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_gpt2_conv1d_layers_are_quantized(scheme):
    model = A.tiny_gpt2()
    ids = torch.randint(0, 1000, (2, 12))
    with torch.inference_mode():
        ref = model(ids).logits
    myq.quantize_model(model, scheme=scheme, group_size=64)
    names = _quantized_names(model)
    assert len(names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert "transformer.h.0.attn.c_attn" in names and "lm_head" not in names
    q = model.get_submodule("transformer.h.0.mlp.c_fc")
    assert (q.in_features, q.out_features) == (64, 256)
    with torch.inference_mode():
        out = model(ids).logits
        gen = model.generate(ids[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 17)
    assert ((out - ref).norm() / ref.norm()).item() < (0.02 if scheme != "w4a16" else 0.1)


# ---- SmolLM2-135M ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2():
    return A.smollm2()


@pytest.fixture(scope="session")
def wiki_windows(smollm2):
    _, tokenizer, _ = smollm2
    return ev.token_windows(tokenizer, A.wikipedia(), window=256, max_windows=2)


@pytest.fixture(scope="session")
def fp32_perplexity(smollm2, wiki_windows):
    return ev.perplexity(smollm2[2], wiki_windows)


@pytest.fixture(scope="session")
def quantized_smollm2(smollm2):
    """scheme -> quantized copy of SmolLM2 (built once per process, shared with test_hf.py)."""
    return A.quantized_smollm2


def test_smollm2_structure(smollm2):
    _, _, model = smollm2
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 211
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert getattr(model, "hf_quantizer", None) is None  # the GGUF marks were cleared before caching
    assert getattr(model.config, "quantization_config", None) is None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_smollm2_runs_and_generates(smollm2, quantized_smollm2, scheme):
    _, tokenizer, fp32 = smollm2
    model = quantized_smollm2(scheme)
    assert len(_quantized_names(model)) == 210  # every linear but the tied lm_head
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert out.shape[1] == ids.shape[1] + 6 and text.strip()
    if scheme == "w8a16":
        assert "Paris" in text, text


@pytest.mark.parametrize("scheme,max_ratio", [("w8a16", 1.01), ("w8a8", 1.05), ("w4a16", 1.6)])
def test_smollm2_perplexity(quantized_smollm2, wiki_windows, fp32_perplexity, scheme, max_ratio, record_property):
    ppl = ev.perplexity(quantized_smollm2(scheme), wiki_windows)
    record_property(f"perplexity_{scheme}", ppl)
    record_property("perplexity_fp32", fp32_perplexity)
    assert 5 < fp32_perplexity < 60
    assert ppl / fp32_perplexity <= max_ratio, (ppl, fp32_perplexity)


@pytest.mark.parametrize("scheme,low,high", [("w8a16", 0.25, 0.27), ("w8a8", 0.25, 0.27), ("w4a16", 0.13, 0.15)])
def test_smollm2_footprint(smollm2, quantized_smollm2, scheme, low, high):
    fp32 = smollm2[2]
    unique = {id(p): p for p in list(fp32.parameters()) + list(fp32.buffers())}  # tied lm_head once
    assert myq.get_memory_footprint(fp32) == sum(p.numel() * p.element_size() for p in unique.values())
    model = quantized_smollm2(scheme)
    ratio = linear_weight_bytes(model) / linear_weight_bytes(fp32)
    assert low <= ratio <= high, ratio
    assert myq.get_memory_footprint(model) < 0.45 * myq.get_memory_footprint(fp32)
    assert sum(myq.module_sizes(model).values()) == myq.get_memory_footprint(model)


def test_smollm2_bf16(smollm2):
    _, tokenizer, _ = smollm2
    model = A.smollm2_copy().to(torch.bfloat16)
    myq.quantize_model(model, scheme="w8a16", progress=False)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight_scale.dtype == torch.float32
    ids = tokenizer("Hello, my name is", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert out.shape[1] == ids.shape[1] + 2


def test_smollm2_pipeline(smollm2, quantized_smollm2):
    from transformers import pipeline

    _, tokenizer, _ = smollm2
    pipe = pipeline("text-generation", model=quantized_smollm2("w4a16"), tokenizer=tokenizer)
    out = pipe("The capital of France is", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The capital of France is")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_smollm2_block_compiles_without_graph_breaks(quantized_smollm2, scheme):
    """A real MLP block (gate/up/down QuantizedLinear + SiLU) traces as one graph."""
    mlp = quantized_smollm2(scheme).model.layers[3].mlp
    x = torch.randn(1, 7, 576)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(mlp)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    compiled = torch.compile(mlp, backend="eager", fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), mlp(x))
    torch._dynamo.reset()


# ---- all-MiniLM-L6-v2 -------------------------------------------------------------------------------

SENTENCES = ["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.",
             "The stock market fell sharply today.", "Photosynthesis converts light into chemical energy.",
             "The cat sleeps on the warm windowsill.", A.SHORT_TEXT]


@pytest.mark.parametrize("scheme,min_cos", [("w8a16", 0.999), ("w8a8", 0.995), ("w4a16", 0.93)])
def test_minilm_embeddings(scheme, min_cos, record_property):
    tokenizer, model = A.minilm()
    ref = ev.sentence_embeddings(model, tokenizer, SENTENCES)
    qmodel = myq.quantize_model(copy.deepcopy(model), scheme=scheme, progress=False)
    assert len(_quantized_names(qmodel)) == 37
    emb = ev.sentence_embeddings(qmodel, tokenizer, SENTENCES)
    cos = (emb * ref).sum(-1)
    record_property(f"minilm_min_cos_{scheme}", cos.min().item())
    assert cos.min().item() >= min_cos, cos
    # similar sentences stay closer than unrelated ones
    assert (emb[0] @ emb[1]).item() > (emb[0] @ emb[2]).item() + 0.3


# ---- CLI ----------------------------------------------------------------------------------------------

def test_python_m_myq_kernels_checks_ops():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "myq_kernels"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch   yes" in run.stdout
    for op in ("int8_linear fp32", "int8_linear_dynamic", "int4_linear asym", "pack_int4", "unpack_int4"):
        assert f"torch   {op}" in run.stdout and "FAIL" not in run.stdout


def test_demo_end_to_end_on_a_tiny_model(smollm2, tmp_path):
    """`myq demo --model DIR` on a tiny random Llama with SmolLM2's tokenizer (seconds)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from myq_kernels import cli

    folder, tokenizer, _ = smollm2
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256)
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    report = cli.demo(cli.build_parser().parse_args([
        "demo", "--model", str(model_dir), "--windows", "1", "--window", "64", "--prefill-tokens", "32",
        "--decode-tokens", "4", "--repeats", "1", "--sample-tokens", "4", "--out", str(out), "--group-size", "32"]))
    assert [r["scheme"] for r in report["rows"]] == ["fp32", "w8a16", "w8a8", "w4a16"]
    assert (out / "weights_hist.png").stat().st_size > 1000
    saved = json.loads((out / "demo.json").read_text())
    assert saved["rows"][1]["linear_ratio"] < 0.3 and set(saved["samples"]) == {r["label"] for r in saved["rows"]}
