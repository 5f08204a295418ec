"""Outlier Suppression+ channel shift: center each activation channel before quantization.

Per input channel of a linear layer, z_j = (max_j + min_j) / 2 over the calibration tokens.
The layer computes W (x - z) + (b + W z): the same function with activations symmetric
around zero (asymmetric outlier channels stop wasting half the int8 range). Folded:

- norm-fed groups (Llama q/k/v, gate/up; LayerNorm with bias): the norm's bias -= z
  (LlamaRMSNorm has none: it is wrapped in `NormWithBias`), each linear's bias += W z
  (a bias is created where there was none);
- v_proj -> o_proj: attention rows sum to one, so shifting the values shifts o_proj's input:
  v_proj.bias -= z, o_proj.bias += W_o z (one z per value channel under grouped-query heads);
- otherwise (explicit=True only) an explicit input shift (`InputTransformLinear`).
  up_proj -> down_proj is not shiftable (SwiGLU multiplies): down_proj, BERT's FFN and
  query/key/value are shifted only with explicit=True.

Combinable with smoothing: `smoothquant(model, batches, shift=True)` shifts first, then
smooths the shifted activations (max|x - z| = (max - min) / 2).

Saving: the model is no longer a stock transformers architecture (new biases, wrapped norms).
Once quantized, its MyqConfig records these changes (`transforms`, and `bias` per quantized
layer), and `from_pretrained` rebuilds them on the stock model before loading the weights, so a
shifted Llama saved with `save_pretrained` reloads with the same outputs.
"""
import torch
from torch import nn

from ..model import ADDED_BIAS_ATTR
from .calibration import collect_activation_stats
from .smoothquant import (NormWithBias, _expand, _group_stats, _inner, _set_submodule, fold_groups,
                          wrap_explicit)


def _add_bias_(linear: nn.Linear, delta: torch.Tensor):
    delta = delta.to(linear.weight.dtype)
    if linear.bias is None:
        linear.bias = nn.Parameter(delta.clone(), requires_grad=False)
        setattr(linear, ADDED_BIAS_ATTR, True)  # recorded for the checkpoint (model.transform_layout)
    else:
        linear.bias.add_(delta.to(linear.bias.dtype))


def _norm_shift_(model, name, z):
    norm = model.get_submodule(name)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.sub_(z.to(bias.dtype))
        return
    weight = getattr(norm, "weight", None)
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
    _set_submodule(model, name, NormWithBias(norm, (-z).to(dtype)))


@torch.no_grad()
def apply_shift(model: nn.Module, stats: dict, exclude=("lm_head",), explicit: bool = False, groups=None) -> dict:
    """Folds the channel shifts z = (max + min) / 2 from `stats` into the model, in place.

    explicit=False (default) shifts only where the shift folds into a neighbour (norm-fed
    groups, v_proj -> o_proj); explicit=True also shifts every other linear through an
    explicit input shift. Measured: an explicit shift of down_proj's input (SwiGLU output,
    heavy-tailed) raises W8A8 per-token error, since z is set by a few extreme tokens.

    Returns {linear name: z as seen at that linear's input} (to shift its statistics)."""
    groups = fold_groups(model, exclude) if groups is None else groups
    out = {}
    for group in groups:
        if (not group.shiftable or group.kind == "explicit") and not explicit:
            continue
        st = _group_stats(stats, group)
        if st is None or st.tokens == 0:
            continue
        z = (st.max + st.min) / 2
        kind = group.kind if group.shiftable else "explicit"
        if kind == "norm":
            _norm_shift_(model, group.source, z)
        elif kind == "linear":
            _add_bias_(_inner(model.get_submodule(group.source)), -z)
        if kind == "explicit":
            for name in group.linears:
                zi = _expand(group, z)
                wrapper = wrap_explicit(model, name)
                if wrapper.input_scale is not None:
                    raise ValueError(f"{name} is already smoothed: shift before smoothing")
                wrapper.input_shift = zi if wrapper.input_shift is None else wrapper.input_shift + zi
                _add_bias_(wrapper.linear, wrapper.linear.weight.float() @ zi.float())
                out[name] = zi
            continue
        zi = _expand(group, z)
        for name in group.linears:
            lin = _inner(model.get_submodule(name))
            _add_bias_(lin, lin.weight.float() @ zi.float())
            out[name] = zi
    return out


def shift_model(model: nn.Module, batches=None, stats: dict = None, exclude=("lm_head",),
                explicit: bool = False, batch_size: int = 1) -> dict:
    """Collects activation statistics over `batches` (unless `stats` is given) and folds the
    Outlier Suppression+ shifts into the model in place. The float model's output is unchanged."""
    if stats is None:
        if batches is None:
            raise ValueError("shift_model needs calibration `batches` or precomputed `stats`")
        stats = collect_activation_stats(model, batches, batch_size=batch_size)
    return apply_shift(model, stats, exclude, explicit)
