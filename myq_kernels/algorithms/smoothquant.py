"""SmoothQuant: migrate activation outliers into the weights before W8A8 quantization.

For a linear layer y = x W^T with per input channel activation maxima max|X_j| (from
calibration) and weight maxima max|W_j|, the smoothing scale is

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          (alpha = 0.5 by default)

and the layer computes (x / s) (W * s)^T: the same function, with activations that are
easier to quantize per token. The division by s is folded so that nothing runs at inference:

- into the preceding norm (LlamaRMSNorm / LayerNorm weight, and bias) when a norm feeds only
  these linears: Llama-style q/k/v (input_layernorm) and gate/up (post_attention_layernorm);
- into the previous linear's output rows when the path between them is channel-wise linear:
  v_proj -> o_proj (attention averages value vectors; grouped-query heads share one scale)
  and up_proj -> down_proj (SwiGLU: act(gate) * up is linear in up); BERT's
  value -> attention.output.dense;
- otherwise into an explicit per-channel input scale, `InputTransformLinear` (BERT's
  query/key/value and FFN: post-LN, the norm's output also feeds the residual).

Before quantization the model computes the same function (to float32 rounding).
`smoothquant(model, batches)` smooths and then quantizes with `quantize_model` (W8A8).

Saving: the wrappers below (and biases added by outlier shift) are not part of the stock
transformers architecture. `myq_kernels.model.transform_layout` records them in the checkpoint's
MyqConfig (`transforms`), and `rebuild_transforms` recreates them on the freshly built stock
model before `from_pretrained` loads the state dict, so a smoothed / shifted model reloads exactly.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model import ADDED_BIAS_ATTR, is_excluded, quantize_model
from ..nn import linear_dims
from .calibration import ActStats, collect_activation_stats

DEFAULT_ALPHA = 0.5
_MIN_SCALE = 1e-5


# ---- modules that carry what cannot be folded into a neighbour ------------------------------

class InputTransformLinear(nn.Module):
    """`linear((x - input_shift) / input_scale)`: an explicit per-channel shift / smoothing scale
    in front of a linear layer with no foldable predecessor. `quantize_model` quantizes the
    inner `linear` (it recurses into children)."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("input_shift", None)
        self.register_buffer("input_scale", None)

    def forward(self, x):
        if self.input_shift is not None:
            x = x - self.input_shift.to(x.dtype)
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        return self.linear(x)

    @property
    def weight(self):
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    def transform_config(self) -> dict:
        """What `rebuild_transforms` needs to recreate this wrapper (see model.transform_layout)."""
        return {"type": "input_transform", "input_shift": self.input_shift is not None,
                "input_scale": self.input_scale is not None}

    @classmethod
    def skeleton(cls, linear: nn.Module, input_shift: bool = False, input_scale: bool = False):
        """Wraps `linear` with empty per-input-channel buffers, for a checkpoint to fill."""
        in_features, _, weight = linear_dims(linear)
        wrapper = cls(linear)
        for name, present in (("input_shift", input_shift), ("input_scale", input_scale)):
            if present:
                setattr(wrapper, name, torch.ones(in_features, dtype=weight.dtype, device=weight.device))
        return wrapper


class NormWithBias(nn.Module):
    """`norm(x) + bias`: gives a bias to a norm that has none (LlamaRMSNorm), for outlier shift."""

    def __init__(self, norm: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def weight(self):
        return self.norm.weight

    def forward(self, x):
        y = self.norm(x)
        return y + self.bias.to(y.dtype)

    def transform_config(self) -> dict:
        return {"type": "norm_bias", "features": self.bias.numel()}

    @classmethod
    def skeleton(cls, norm: nn.Module, features: int):
        """`norm` with a zero bias of `features` channels, for a checkpoint to fill."""
        weight = getattr(norm, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel() != features:
            raise ValueError(f"a norm_bias of {features} channels does not fit {type(norm).__name__} with "
                             f"{weight.numel()} channels")
        like = weight if isinstance(weight, torch.Tensor) else torch.empty(0)
        return cls(norm, torch.zeros(features, dtype=like.dtype, device=like.device))


def _check_flag(name, spec, key):
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"transform {name!r}: {key} must be true or false, got {value!r}")
    return value


def _rebuild_norm_bias(model, name, module, spec):
    if isinstance(module, NormWithBias):
        raise ValueError(f"{name!r} already carries a norm bias")
    features = spec.get("features")
    if isinstance(features, bool) or not isinstance(features, int) or features <= 0:
        raise ValueError(f"transform {name!r}: norm_bias needs a positive int 'features', got {features!r}")
    _set_submodule(model, name, NormWithBias.skeleton(module, features))


def _rebuild_input_transform(model, name, module, spec):
    if isinstance(module, InputTransformLinear) or not _is_lin(module):
        raise ValueError(f"transform {name!r}: input_transform wraps an nn.Linear, found {type(module).__name__}")
    _set_submodule(model, name, InputTransformLinear.skeleton(
        module, _check_flag(name, spec, "input_shift"), _check_flag(name, spec, "input_scale")))


def _rebuild_linear_bias(model, name, module, spec):
    if not isinstance(module, nn.Linear):
        raise ValueError(f"transform {name!r}: linear_bias applies to an nn.Linear, found {type(module).__name__}")
    if module.bias is None:
        w = module.weight
        module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=w.dtype, device=w.device),
                                   requires_grad=False)
    setattr(module, ADDED_BIAS_ATTR, True)


TRANSFORM_BUILDERS = {"norm_bias": _rebuild_norm_bias, "input_transform": _rebuild_input_transform,
                      "linear_bias": _rebuild_linear_bias}


def rebuild_transforms(model: nn.Module, transforms: dict) -> nn.Module:
    """Recreates on a stock model the structure `model.transform_layout` recorded (norm biases,
    explicit input transforms, added linear biases), with empty tensors for a state dict to fill.
    Parents are rebuilt before their children. Returns the model (changed in place)."""
    if not isinstance(transforms, dict):
        raise ValueError(f"transforms must be a dict {{module name: spec}}, got {type(transforms).__name__}")
    for name in sorted(transforms, key=lambda n: n.count(".")):
        spec = transforms[name]
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in TRANSFORM_BUILDERS:
            raise ValueError(f"unknown transform type {kind!r} for module {name!r} (known: "
                             f"{', '.join(sorted(TRANSFORM_BUILDERS))}; was the checkpoint written by a "
                             f"newer myq_kernels?)")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the checkpoint's quantization_config transforms module {name!r}, which this "
                             f"model does not have") from None
        TRANSFORM_BUILDERS[kind](model, name, module, spec)
    return model


# ---- where each linear layer's input transform goes ----------------------------------------

@dataclass
class FoldGroup:
    """Linears sharing one input transform, and where it is folded.

    kind "norm":     source = the norm module's name, folds into its weight (and bias)
    kind "linear":   source = the previous linear; its output row index_map[c] feeds input c
    kind "explicit": source = None; an InputTransformLinear wraps the (single) linear
    """
    kind: str
    source: str
    linears: list
    index_map: torch.Tensor = None
    shiftable: bool = True
    meta: dict = field(default_factory=dict)


def _get(model, name):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _gqa_index_map(attn, v_proj, o_proj):
    """o_proj input channel c reads value channel index_map[c] (grouped-query heads repeat kv heads)."""
    kv_ch, o_in = v_proj.out_features, o_proj.in_features
    if o_in == kv_ch:
        return torch.arange(o_in)
    head_dim = getattr(attn, "head_dim", None)
    if not head_dim or o_in % kv_ch or kv_ch % head_dim:
        return None
    n_rep = o_in // kv_ch
    c = torch.arange(o_in)
    return ((c // head_dim) // n_rep) * head_dim + c % head_dim


def _is_lin(module) -> bool:
    return isinstance(module, (nn.Linear, InputTransformLinear))


def fold_groups(model: nn.Module, exclude=("lm_head",)) -> list:
    """The FoldGroups covering every (non-excluded) nn.Linear of the model (an
    InputTransformLinear counts as the linear it wraps, under its own name)."""
    groups, covered = [], set()

    def add(group):
        names = [n for n in group.linears if not is_excluded(n, exclude)]
        if len(names) != len(group.linears) or any(n in covered for n in names):
            return
        groups.append(group)
        covered.update(names)

    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        attn = getattr(module, "self_attn", None)
        mlp = getattr(module, "mlp", None)
        ln1 = getattr(module, "input_layernorm", None)
        ln2 = getattr(module, "post_attention_layernorm", None)
        if attn is not None and ln1 is not None and all(
                _is_lin(getattr(attn, p, None)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            # Llama-style pre-norm decoder layer
            add(FoldGroup("norm", prefix + "input_layernorm",
                          [prefix + f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]))
            index_map = _gqa_index_map(attn, attn.v_proj, attn.o_proj)
            if index_map is not None:
                add(FoldGroup("linear", prefix + "self_attn.v_proj", [prefix + "self_attn.o_proj"], index_map))
            if mlp is not None and ln2 is not None and all(
                    _is_lin(getattr(mlp, p, None)) for p in ("gate_proj", "up_proj", "down_proj")):
                add(FoldGroup("norm", prefix + "post_attention_layernorm",
                              [prefix + "mlp.gate_proj", prefix + "mlp.up_proj"]))
                add(FoldGroup("linear", prefix + "mlp.up_proj", [prefix + "mlp.down_proj"],
                              torch.arange(mlp.down_proj.in_features), shiftable=False))
        value = _get(module, "attention.self.value") if hasattr(module, "attention") else None
        dense = _get(module, "attention.output.dense") if hasattr(module, "attention") else None
        if _is_lin(value) and _is_lin(dense) and value.out_features == dense.in_features:
            # BERT: value -> attention output projection (per-head averaging is channel-wise)
            add(FoldGroup("linear", prefix + "attention.self.value", [prefix + "attention.output.dense"],
                          torch.arange(dense.in_features)))
    for name, module in model.named_modules():
        if _is_lin(module) and name not in covered and not is_excluded(name, exclude):
            if name.endswith(".linear") and isinstance(_get(model, name.rsplit(".", 1)[0]), InputTransformLinear):
                continue
            groups.append(FoldGroup("explicit", None, [name]))
            covered.add(name)
    return groups


def _group_stats(stats: dict, group: FoldGroup):
    """ActStats of the group's (shared) input; for a "linear" group reduced onto the previous
    linear's output channels (one value per value channel under grouped-query attention)."""
    present = [stats[n] for n in group.linears if n in stats]
    if not present:
        return None
    s = present[0]
    if group.kind != "linear" or len(group.index_map) == len(torch.unique(group.index_map)):
        if group.kind == "linear":
            # identity / permutation: reorder onto the source's channels
            inv = torch.empty_like(group.index_map)
            inv[group.index_map] = torch.arange(len(group.index_map))
            return ActStats(s.min[inv], s.max[inv], s.absmax[inv], s.tokens)
        return s
    n_src = int(group.index_map.max()) + 1
    idx = group.index_map.to(s.min.device)

    def reduce(values, how, fill):
        out = torch.full((n_src,), fill, device=values.device)
        return out.scatter_reduce(0, idx, values, reduce=how)

    return ActStats(reduce(s.min, "amin", float("inf")), reduce(s.max, "amax", float("-inf")),
                    reduce(s.absmax, "amax", 0.0), s.tokens)


def _expand(group: FoldGroup, v: torch.Tensor) -> torch.Tensor:
    """A per-source-channel vector as one value per input column of the group's linears."""
    return v if group.kind != "linear" else v[group.index_map.to(v.device)]


def _set_submodule(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def wrap_explicit(model: nn.Module, name: str) -> InputTransformLinear:
    module = model.get_submodule(name)
    if isinstance(module, InputTransformLinear):
        return module
    wrapper = InputTransformLinear(module)
    _set_submodule(model, name, wrapper)
    return wrapper


def _inner(module):
    return module.linear if isinstance(module, InputTransformLinear) else module


def _norm_scale_(norm: nn.Module, inv_s: torch.Tensor):
    """norm's output *= inv_s (per channel), folded into its weight and bias."""
    target = norm.norm if isinstance(norm, NormWithBias) else norm
    weight = getattr(target, "weight", None)
    if weight is None:
        raise ValueError(f"cannot fold a smoothing scale into {type(target).__name__}: it has no weight")
    weight.mul_(inv_s.to(weight.dtype))
    for holder in (norm, target) if norm is not target else (norm,):
        bias = getattr(holder, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.mul_(inv_s.to(bias.dtype))


def smoothing_scales(act_absmax: torch.Tensor, weights, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), W_j over every weight's column j; 1 where undefined."""
    w_max = torch.stack([w.detach().abs().float().amax(dim=0) for w in weights]).amax(dim=0)
    a = act_absmax.float().to(w_max.device)
    s = a.clamp(min=_MIN_SCALE).pow(alpha) / w_max.clamp(min=_MIN_SCALE).pow(1 - alpha)
    valid = (a > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(valid, s.clamp(min=_MIN_SCALE), torch.ones_like(s))


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (migration strength), got {alpha!r}")
    return float(alpha)


@torch.no_grad()
def apply_smoothing(model: nn.Module, stats: dict, alpha: float = DEFAULT_ALPHA, exclude=("lm_head",),
                    explicit: bool = True, groups=None) -> dict:
    """Folds SmoothQuant scales computed from `stats` ({linear name: ActStats}) into the model, in
    place. explicit=False leaves linears without a foldable predecessor alone. Returns {group's
    first linear: s}."""
    alpha = _check_alpha(alpha)
    groups = fold_groups(model, exclude) if groups is None else groups
    out = {}
    for group in groups:
        if group.kind == "explicit" and not explicit:
            continue
        st = _group_stats(stats, group)
        if st is None or st.tokens == 0:
            continue
        linears = [_inner(model.get_submodule(n)) for n in group.linears]
        if group.kind == "linear":
            weights = [_reduce_columns(lin.weight, group.index_map, len(st.absmax)) for lin in linears]
        else:
            weights = [lin.weight for lin in linears]
        s = smoothing_scales(st.absmax, weights, alpha)
        inv_s = 1.0 / s
        if group.kind == "norm":
            _norm_scale_(model.get_submodule(group.source), inv_s)
        elif group.kind == "linear":
            prev = _inner(model.get_submodule(group.source))
            prev.weight.mul_(inv_s.to(prev.weight.dtype).unsqueeze(-1))
            if prev.bias is not None:
                prev.bias.mul_(inv_s.to(prev.bias.dtype))
        else:
            wrapper = wrap_explicit(model, group.linears[0])
            old = wrapper.input_scale
            wrapper.input_scale = s if old is None else old * s
            linears = [wrapper.linear]
        cols = _expand(group, s)
        for lin in linears:
            lin.weight.mul_(cols.to(lin.weight.dtype))
        if group.kind != "explicit":
            # an explicit shift behind a fold now sees x / s: scale it the same way
            for n in group.linears:
                m = model.get_submodule(n)
                if isinstance(m, InputTransformLinear) and m.input_shift is not None:
                    m.input_shift = m.input_shift / cols.to(m.input_shift.dtype)
        out[group.linears[0]] = s
    return out


def _reduce_columns(weight, index_map, n_src):
    """|W| reduced onto source channels: column maxima over the columns each source channel feeds."""
    w = weight.detach().abs().float()
    idx = index_map.to(w.device).unsqueeze(0).expand_as(w)
    return torch.zeros(w.shape[0], n_src, device=w.device).scatter_reduce(1, idx, w, reduce="amax")


def smooth_model(model: nn.Module, batches=None, stats: dict = None, alpha: float = DEFAULT_ALPHA,
                 exclude=("lm_head",), explicit: bool = True, batch_size: int = 1) -> dict:
    """Collects activation statistics over `batches` (unless `stats` is given) and folds the
    SmoothQuant scales into the model in place. The float model's output is unchanged."""
    if stats is None:
        if batches is None:
            raise ValueError("smooth_model needs calibration `batches` or precomputed `stats`")
        stats = collect_activation_stats(model, batches, batch_size=batch_size)
    return apply_smoothing(model, stats, alpha, exclude, explicit)


def smoothquant(model: nn.Module, batches=None, alpha: float = DEFAULT_ALPHA, scheme="w8a8",
                shift: bool = False, exclude=("lm_head",), explicit: bool = True, stats: dict = None,
                batch_size: int = 1, shift_explicit: bool = False, **quantize_kwargs):
    """SmoothQuant (with shift=True: Outlier Suppression+ shift first), then `quantize_model`.

    explicit: smooth linears without a foldable predecessor through an explicit input scale.
    shift_explicit: the same for the shift (see `outlier_shift.apply_shift`).

    Returns the quantized model (modified in place).
    """
    _check_alpha(alpha)
    if stats is None:
        if batches is None:
            raise ValueError("smoothquant needs calibration `batches` or precomputed `stats`")
        stats = collect_activation_stats(model, batches, batch_size=batch_size)
    groups = fold_groups(model, exclude)
    if shift:
        from .outlier_shift import apply_shift
        shifts = apply_shift(model, stats, exclude=exclude, explicit=shift_explicit, groups=groups)
        stats = {name: st.shifted(shifts[name]) if name in shifts else st for name, st in stats.items()}
    apply_smoothing(model, stats, alpha, exclude, explicit, groups=groups)
    return quantize_model(model, scheme=scheme, exclude=exclude, **quantize_kwargs)
