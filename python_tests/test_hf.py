"""Hugging Face integration: quant_method "myq", save_pretrained / from_pretrained bit-exact,
quantize while loading, GPT-2 Conv1D and BERT checkpoints, bf16, bad arguments, old transformers."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import model_assets as A

transformers = pytest.importorskip("transformers", reason="transformers is not installed: "
                                   "pip install 'transformers>=5.18'")

import myq_kernels as myq  # noqa: E402
from myq_kernels import hf  # noqa: E402
from myq_kernels.nn import QuantizedLinear  # noqa: E402

SCHEMES = ("w8a16", "w8a8", "w4a16")


def _quantized(model):
    """{layer: options incl. bias}: the layout the checkpoint's quantization_config records."""
    return myq.model.quantized_layout(model)


def _safetensors_dtypes(folder):
    from safetensors import safe_open

    dtypes = {}
    with safe_open(os.path.join(folder, "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            dtypes[key] = f.get_slice(key).get_dtype()
    return dtypes


def test_registered_with_transformers():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZER_MAPPING["myq"] is hf.MyqHfQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["myq"] is hf.MyqConfig
    assert myq.MyqConfig is hf.MyqConfig


def test_import_is_lazy_and_registers_when_transformers_loads():
    code = ("import sys, myq_kernels\n"
            "assert 'transformers' not in sys.modules, 'import myq_kernels imported transformers'\n"
            "from transformers import AutoModelForCausalLM\n"
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M\n"
            "assert M['myq'].__name__ == 'MyqHfQuantizer', M.get('myq')\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("scheme", SCHEMES)
def test_smollm2_save_load_bit_exact(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    _, tokenizer, _ = A.smollm2()
    model = A.quantized_smollm2(scheme)
    ids = tokenizer(A.SHORT_TEXT, return_tensors="pt").input_ids[:, :24]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "myq" and config["scheme"] == scheme
    assert len(config["modules"]) == 210 and "lm_head" not in config["modules"]
    dtypes = _safetensors_dtypes(tmp_path)
    if scheme == "w4a16":
        assert dtypes["model.layers.0.mlp.down_proj.weight_packed"] == "U8"
        assert dtypes["model.layers.0.mlp.down_proj.weight_zero"] == "F32"
    else:
        assert dtypes["model.layers.0.mlp.down_proj.weight"] == "I8"
    assert dtypes["model.layers.0.mlp.down_proj.weight_scale"] == "F32"
    size = os.path.getsize(tmp_path / "model.safetensors")
    assert size < 0.45 * 538e6, size  # int8 / int4 on disk, not float

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert _quantized(loaded) == _quantized(model)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert myq.get_memory_footprint(loaded) == myq.get_memory_footprint(model)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        a = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        b = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert torch.equal(a, b)


def test_quantize_while_loading_matches_quantize_model(tmp_path):
    from transformers import AutoModelForCausalLM

    folder, tokenizer, _ = A.smollm2()
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=myq.MyqConfig(scheme="w4a16", group_size=128)).eval()
    model = A.quantized_smollm2("w4a16")
    assert _quantized(loaded) == _quantized(model)
    assert loaded.config.quantization_config.modules == _quantized(model)
    ids = tokenizer(A.SHORT_TEXT, return_tensors="pt").input_ids[:, :16]
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # ... and what it saves loads back identically
    loaded.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_load_in_bf16_keeps_float32_scales(tmp_path):
    from transformers import AutoModelForCausalLM

    _, tokenizer, _ = A.smollm2()
    A.quantized_smollm2("w8a16").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantizedLinear) and q.weight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
    assert torch.equal(q.weight_scale, A.quantized_smollm2("w8a16").model.layers[0].self_attn.q_proj.weight_scale)
    ids = tokenizer("Hello", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gpt2_conv1d_save_load(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    model = myq.quantize_model(A.tiny_gpt2(), scheme=scheme, group_size=32)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert _quantized(loaded) == _quantized(model) and len(_quantized(model)) == 8
    ids = torch.randint(0, 1000, (2, 10))
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_minilm_save_load(tmp_path):
    from transformers import AutoModel

    tokenizer, fp32 = A.minilm()
    import copy

    model = myq.quantize_model(copy.deepcopy(fp32), scheme="w8a8", progress=False)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    batch = tokenizer(["a quantized sentence encoder"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_gguf_marks_are_replaced_other_quantizers_refused():
    model = A.tiny_gpt2()
    gguf = types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method="gguf"))
    model.hf_quantizer = gguf
    model.config.quantization_config = {"quant_method": "gguf"}
    myq.quantize_model(model, scheme="w8a16")
    assert isinstance(model.hf_quantizer, hf.MyqHfQuantizer)
    assert model.config.quantization_config.quant_method == "myq"
    other = A.tiny_gpt2()
    other.hf_quantizer = types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method="bitsandbytes_4bit"))
    with pytest.raises(ValueError, match="already quantized by transformers' 'bitsandbytes_4bit'"):
        myq.quantize_model(other, scheme="w8a16")


def test_dequantize_through_transformers():
    model = myq.quantize_model(A.tiny_gpt2(), scheme="w8a16")
    ids = torch.randint(0, 1000, (1, 8))
    with torch.inference_mode():
        want = model(ids).logits
    model.dequantize()
    assert not _quantized(model) and getattr(model, "hf_quantizer", None) is None
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-4, atol=1e-4)


def test_config_bad_arguments():
    with pytest.raises(ValueError, match="scheme must be one of"):
        myq.MyqConfig(scheme="int3")
    with pytest.raises(ValueError, match="group_size must be a positive even int"):
        myq.MyqConfig(scheme="w4a16", group_size=7)
    with pytest.raises(ValueError, match="scheme must be one of"):
        myq.MyqConfig(modules={"x": {"scheme": "bogus"}})
    config = myq.MyqConfig.from_dict(myq.MyqConfig(scheme="w4a16", symmetric=True).to_dict())
    assert (config.scheme, config.group_size, config.symmetric, config.exclude) == ("w4a16", 128, True, ["lm_head"])
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        myq.MyqConfig(scheme="llm_int8", threshold=float("nan"))
    with pytest.raises(ValueError, match="transforms must be a dict"):
        myq.MyqConfig(transforms=["model.norm"])
    with pytest.raises(ValueError, match=r"transforms\['model.norm'\] must be a dict with a 'type'"):
        myq.MyqConfig(transforms={"model.norm": "norm_bias"})
    with pytest.raises(ValueError, match=r"modules\['x'\] must be a dict"):
        myq.MyqConfig(modules={"x": "w8a8"})
    config = myq.MyqConfig.from_dict(myq.MyqConfig(scheme="llm_int8", threshold=3).to_dict())
    assert config.threshold == 3.0 and config.transforms is None


def test_old_transformers_fails_clearly(monkeypatch):
    monkeypatch.setattr(hf, "transformers_version", lambda: "4.57.6")
    with pytest.raises(ImportError, match=r"transformers>=5\.18.*4\.57\.6 is installed"):
        hf.require_transformers()
    assert not hf.transformers_supported()
