"""Does GPTQ's gain on a layer carry over from the calibration text to held-out text?

    python benchmarks/gptq_heldout_error.py [LAYER ...] [--percdamp 0.01 0.1] [--act-order 0 1]

For each SmolLM2 layer named (default: a few of each kind), captures the layer's inputs on the
float model for the calibration windows and for the evaluation windows of
`accuracy_table.py` (same split of the Wikipedia articles), quantizes the weight to symmetric
4-bit (group 128, 96 on 576-wide layers) with RTN and with GPTQ (Hessian from the calibration
inputs only), and prints the relative output error ||X W_q^T - X W^T|| / ||X W^T|| on both.
A GPTQ that beats RTN on calibration inputs but not on held-out ones is overfitting.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from myq_kernels import assets  # noqa: E402
from myq_kernels.algorithms import calibration_batches  # noqa: E402
from myq_kernels.algorithms.gptq import HessianAccumulator, gptq_quantize_weight  # noqa: E402
from myq_kernels.eval import token_windows  # noqa: E402
from myq_kernels.primitives import absmax_quantize, dequantize  # noqa: E402

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.5.mlp.down_proj",
          "model.layers.10.self_attn.o_proj", "model.layers.20.mlp.gate_proj"]


def relative_error(x, w, wq):
    ref = x @ w.T
    return ((x @ wq.T - ref).norm() / ref.norm()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("layers", nargs="*", default=LAYERS)
    p.add_argument("--percdamp", type=float, nargs="+", default=[0.01])
    p.add_argument("--act-order", type=int, nargs="+", choices=(0, 1), default=[0, 1])
    p.add_argument("--clip-search", type=int, nargs="+", choices=(0, 1), default=[0, 1])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--calib", type=int, default=32)
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(assets.smollm2_dir())
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    articles = assets.wikipedia_articles()
    evaluation = token_windows(tok, "\n\n".join(articles[-30:]), window=512, max_windows=args.windows)
    calibration = calibration_batches(tok, "\n\n".join(articles[:-30]), n_samples=args.calib, seq_len=256)

    inputs = {name: {"calib": [], "eval": []} for name in args.layers}
    split = ["calib"]
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda mod, a, _n=name: inputs[_n][split[0]].append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for name in args.layers]
    with torch.no_grad():
        for ids in calibration:
            model(input_ids=ids.unsqueeze(0))
        split[0] = "eval"
        for ids in evaluation:
            model(input_ids=ids.unsqueeze(0))
    for h in hooks:
        h.remove()

    print(f"{'layer':34s} {'method':34s} {'calib err':>9s} {'held-out':>9s}")
    for name in args.layers:
        w = model.get_submodule(name).weight.detach().float()
        group = 128 if w.shape[1] % 128 == 0 else 96
        xc, xe = torch.cat(inputs[name]["calib"]), torch.cat(inputs[name]["eval"])
        hessian = HessianAccumulator(w.shape[1])
        hessian.add(xc)
        q, scale = absmax_quantize(w, bits=4, granularity=group)
        rows = [("RTN", dequantize(q, scale, granularity=group))]
        for damp in args.percdamp:
            for order in args.act_order:
                for clip in args.clip_search:
                    res = gptq_quantize_weight(w, hessian.H, 4, group, True, act_order=bool(order),
                                               percdamp=damp, clip_search=bool(clip))
                    rows.append((f"GPTQ damp {damp} act-order {order} clip {clip}", res["weight"]))
        for label, wq in rows:
            print(f"{name:34s} {label:34s} {relative_error(xc, w, wq):9.4f} {relative_error(xe, w, wq):9.4f}")


if __name__ == "__main__":
    main()
