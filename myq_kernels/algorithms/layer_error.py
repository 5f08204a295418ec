"""Layer-wise quantization error: which layers suffer most from a scheme.

`layer_errors(model, batches, scheme=...)` runs the float model over calibration batches;
each linear layer's input is also fed to a quantized copy of that layer (the float model
is not modified), accumulating per layer

    mse        mean (y_q - y)^2
    rel_error  ||y_q - y|| / ||y||     (Frobenius norms over all calibration tokens)

`format_table(rows)` prints them worst first, `plot_layer_errors(rows, "errors.png")` draws a
bar chart (matplotlib), and `keep_float(rows, top=k)` / `schemes_from_errors(...)` build the
per-layer scheme dict that `quantize_model(model, scheme=...)` accepts, leaving the worst
layers in float (or in a higher-precision scheme).
"""
from collections import OrderedDict

import torch
from torch import nn

from ..model import plan_quantization
from ..nn import DEFAULT_GROUP_SIZE, QuantizedLinear
from .calibration import run_model


@torch.no_grad()
def layer_errors(model: nn.Module, batches, scheme="w8a8", group_size: int = DEFAULT_GROUP_SIZE,
                 symmetric: bool = None, exclude=("lm_head",), batch_size: int = 1,
                 progress: bool = False) -> list:
    """[{name, scheme, mse, rel_error, out_norm, tokens}] for every layer `quantize_model` would
    quantize with these arguments, in model order. Each layer is measured in isolation: the
    quantized copy sees the float model's input to that layer."""
    plan, _ = plan_quantization(model, scheme, exclude, group_size, symmetric)
    sums = OrderedDict((name, {"err2": 0.0, "ref2": 0.0, "count": 0, "tokens": 0}) for name in plan)
    quantized, handles = {}, []
    for name, options in plan.items():
        module = model.get_submodule(name)

        def hook(mod, args, out, _name=name, _options=options):
            q = quantized.get(_name)
            if q is None:
                q = quantized[_name] = QuantizedLinear.from_linear(
                    mod, scheme=_options["scheme"], group_size=_options.get("group_size"),
                    symmetric=_options.get("symmetric"))
            y = out.float()
            diff = q(args[0]).float() - y
            s = sums[_name]
            s["err2"] += float((diff * diff).sum())
            s["ref2"] += float((y * y).sum())
            s["count"] += y.numel()
            s["tokens"] += y.numel() // y.shape[-1]

        handles.append(module.register_forward_hook(hook))
    try:
        run_model(model, batches, batch_size, progress)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, s in sums.items():
        if s["count"] == 0:
            continue
        rows.append({"name": name, "scheme": plan[name]["scheme"],
                     "group_size": plan[name].get("group_size"),
                     "mse": s["err2"] / s["count"],
                     "rel_error": (s["err2"] ** 0.5) / max(s["ref2"] ** 0.5, 1e-30),
                     "out_norm": (s["ref2"] / s["count"]) ** 0.5, "tokens": s["tokens"]})
    return rows


def worst(rows, key: str = "rel_error", top: int = None) -> list:
    ranked = sorted(rows, key=lambda r: r[key], reverse=True)
    return ranked if top is None else ranked[:top]


def format_table(rows, key: str = "rel_error", top: int = None) -> str:
    """A plain-text table, worst layers (by `key`) first."""
    ranked = worst(rows, key, top)
    width = max([len("layer")] + [len(r["name"]) for r in ranked])
    lines = [f"{'layer':<{width}}  {'scheme':<8}  {'MSE':>10}  {'rel. error':>10}",
             f"{'-' * width}  {'-' * 8}  {'-' * 10}  {'-' * 10}"]
    for r in ranked:
        lines.append(f"{r['name']:<{width}}  {r['scheme']:<8}  {r['mse']:>10.3e}  {r['rel_error']:>10.4%}")
    return "\n".join(lines)


def plot_layer_errors(rows, path, key: str = "rel_error", title: str = None, highlight: int = 0):
    """Bar chart PNG of each layer's error in model order; the `highlight` worst layers in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    values = [r[key] for r in rows]
    bad = {r["name"] for r in worst(rows, key, highlight)} if highlight else set()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(rows) + 2), 4.5))
    ax.bar(range(len(rows)), values, color=["tab:red" if n in bad else "tab:blue" for n in names])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=5 if len(rows) > 60 else 7)
    ax.set_ylabel("relative error ||y_q - y|| / ||y||" if key == "rel_error" else key)
    if key == "mse":
        ax.set_yscale("log")
    schemes = sorted({r["scheme"] for r in rows})
    ax.set_title(title or f"per-layer quantization error ({', '.join(schemes)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def schemes_from_errors(rows, scheme="w8a8", top: int = None, threshold: float = None,
                        fallback=None, key: str = "rel_error") -> dict:
    """A per-layer scheme dict for `quantize_model`: the `top` worst layers (or those whose
    `key` exceeds `threshold`) get `fallback` (None = stay float, or e.g. "w8a16"); every
    other layer gets `scheme`."""
    if top is None and threshold is None:
        raise ValueError("give top (number of layers) or threshold (error above which a layer is kept)")
    keep = set()
    if top is not None:
        keep.update(r["name"] for r in worst(rows, key, top))
    if threshold is not None:
        keep.update(r["name"] for r in rows if r[key] > threshold)
    choice = OrderedDict((r["name"], fallback) for r in rows if r["name"] in keep)
    choice["*"] = scheme
    return dict(choice)
