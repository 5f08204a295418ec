"""Model level: quantize every linear layer of a model in place; measure its footprint."""
import fnmatch
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .nn import (DEFAULT_GROUP_SIZE, QuantizedLinear, check_group_size, check_scheme, check_threshold,
                 fit_group_size, is_conv1d, linear_dims, scheme_options)

PROGRESS_MIN_LAYERS = 32  # show a tqdm bar (progress=None) from this many layers up


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _check_patterns(argname, patterns):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    patterns = tuple(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{argname} must hold module names or fnmatch patterns (str), got {p!r}")
    return patterns


def is_excluded(name: str, exclude) -> bool:
    """True when `name` equals one of `exclude` or matches it as an fnmatch pattern.

    A pattern also excludes everything under a matching module (exclude=("model.layers.0",)
    leaves all of layer 0 alone).
    """
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(_matches(prefix, p) for p in exclude for prefix in prefixes)


def _normalise_choice(choice, name, defaults):
    """A per-layer choice (None, a scheme name or a dict of options) as a full option dict or None."""
    if choice is None or choice is False:
        return None
    if isinstance(choice, str):
        options = dict(defaults, scheme=choice)
    elif isinstance(choice, dict):
        unknown = set(choice) - {"scheme", "group_size", "symmetric", "threshold"}
        if unknown:
            raise ValueError(f"per-layer options for {name!r} may hold scheme, group_size, symmetric, "
                             f"threshold; got {sorted(unknown)}")
        options = dict(defaults, **choice)
    else:
        raise TypeError(f"the scheme chosen for {name!r} must be a scheme name, a dict of options or "
                        f"None, got {type(choice).__name__}")
    options["scheme"] = check_scheme(options["scheme"]).name
    return options


def resolve_scheme(scheme, name: str, module: nn.Module, defaults: dict):
    """Options dict {scheme, group_size, symmetric} for layer `name`, or None to leave it alone.

    scheme: a scheme name; a dict {name or fnmatch pattern: scheme / option dict / None} (first
    match in order wins, no match = leave alone); or a callable name -> scheme / dict / None.
    """
    if isinstance(scheme, str):
        return _normalise_choice(scheme, name, defaults)
    if isinstance(scheme, dict):
        for pattern, choice in scheme.items():
            if _matches(name, pattern):
                return _normalise_choice(choice, name, defaults)
        return None
    if callable(scheme):
        return _normalise_choice(scheme(name), name, defaults)
    raise TypeError(f"scheme must be a scheme name, a dict pattern -> scheme, or a callable "
                    f"name -> scheme; got {type(scheme).__name__}")


def _is_quantizable(module) -> bool:
    return (isinstance(module, nn.Linear) or is_conv1d(module)) and not isinstance(module, QuantizedLinear)


def _tied_owners(model: nn.Module) -> dict:
    """id(parameter) -> [(id(module), "path.name")] for every module holding it.

    A parameter held by two different modules is tied; one module registered under two
    names is merely shared (quantize_model replaces it at every path).
    """
    owners = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append((id(module), f"{mname}.{pname}" if mname else pname))
    return owners


def plan_quantization(model: nn.Module, scheme="w8a16", exclude=("lm_head",), group_size=DEFAULT_GROUP_SIZE,
                      symmetric=None, fit_group=True, threshold=None):
    """{layer name: options} for the layers `quantize_model` would replace, and {name: reason}
    for the linear layers it would leave alone."""
    exclude = _check_patterns("exclude", exclude)
    if isinstance(scheme, str):
        check_scheme(scheme)
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int, got {type(group_size).__name__} ({group_size!r})")
        if group_size <= 0 or group_size % 2:
            raise ValueError(f"group_size must be a positive even number, got {group_size}")
    if threshold is not None:
        check_threshold(threshold)
    defaults = {"group_size": group_size, "symmetric": symmetric, "threshold": threshold}
    owners = _tied_owners(model)
    plan, skipped = OrderedDict(), OrderedDict()
    for name, module in model.named_modules():
        if not _is_quantizable(module):
            continue
        if is_excluded(name, exclude):
            skipped[name] = "excluded"
            continue
        options = resolve_scheme(scheme, name, module, defaults)
        if options is None:
            skipped[name] = "no scheme chosen"
            continue
        tied = sorted({path for mid, path in owners.get(id(module.weight), ()) if mid != id(module)})
        if tied:
            skipped[name] = f"weight tied to {', '.join(tied)} (left alone, not duplicated)"
            continue
        spec = check_scheme(options["scheme"])
        # scheme options (llm_int8: threshold); a model-wide default meant for another scheme is ignored
        extra = scheme_options(spec, {"threshold": options.get("threshold")}, strict=False)
        in_features = linear_dims(module)[0]
        if spec.uses_group_size:
            g = options["group_size"] or DEFAULT_GROUP_SIZE
            if in_features % 2:
                skipped[name] = f"in_features={in_features} is odd: {spec.name} needs it even"
                continue
            if in_features % g:
                if not fit_group:
                    check_group_size(g, in_features)  # raises, naming group_size
                g = fit_group_size(g, in_features)
            options = {"scheme": spec.name, "group_size": g,
                       "symmetric": False if options["symmetric"] is None else bool(options["symmetric"])}
        else:
            options = {"scheme": spec.name}
        plan[name] = dict(options, **extra)
    return plan, skipped


def _set_submodule(model: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(model: nn.Module, scheme="w8a16", exclude=("lm_head",), group_size: int = DEFAULT_GROUP_SIZE,
                   symmetric: bool = None, fit_group: bool = True, progress=None, verbose: bool = False,
                   threshold: float = None):
    """Replaces the model's nn.Linear / Conv1D layers by QuantizedLinear in place; returns the model.

    scheme     "w8a16" | "w8a8" | "w4a16" (see myq_kernels.nn.SCHEMES), or per layer: a dict
               {name or fnmatch pattern: scheme | {"scheme", "group_size", "symmetric", "threshold"}
               | None}
               (first match wins; layers matching no pattern stay float), or a callable
               name -> scheme / dict / None.
    exclude    exact module names or fnmatch patterns left in float (default: lm_head).
    group_size int4 group length. With fit_group=True a layer whose in_features it does not
               divide takes the largest even divisor below it (e.g. 96 for K=576 at 128);
               fit_group=False raises instead.
    symmetric  int4 symmetric (no zero points) or asymmetric (default).
    progress   tqdm bar over the layers: None = only for models with many layers.
    threshold  llm_int8 layers: the outlier magnitude (default 6.0); ignored by other schemes.

    Linear layers whose weight is tied to another module's (an lm_head tied to the embedding)
    are left alone: quantizing them would silently untie the weight. Returns the model; a
    transformers model also gets a `MyqConfig` so `save_pretrained` writes a loadable checkpoint.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_hf_marks(model)
    plan, skipped = plan_quantization(model, scheme, exclude, group_size, symmetric, fit_group, threshold)
    tied = {k: v for k, v in skipped.items() if v.startswith("weight tied")}
    if tied and verbose:
        warnings.warn("left tied layers unquantized: " + "; ".join(f"{k}: {v}" for k, v in tied.items()))
    bar = None
    show = progress if progress is not None else len(plan) >= PROGRESS_MIN_LAYERS
    if show:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(plan), desc=f"myq: quantizing", unit="layer", leave=False)
        except ImportError:
            bar = None
    paths = {}
    for path, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(path)
    with torch.no_grad():
        for name, options in plan.items():
            module = model.get_submodule(name)
            q = QuantizedLinear.from_linear(module, scheme=options["scheme"],
                                            group_size=options.get("group_size"),
                                            symmetric=options.get("symmetric"),
                                            threshold=options.get("threshold"))
            for path in paths.get(id(module), [name]):  # a module registered under several names
                _set_submodule(model, path, q)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    model._myq_skipped = dict(skipped)
    _attach_hf_config(model, scheme, exclude, group_size, symmetric, threshold)
    return model


def quantized_layout(model: nn.Module) -> dict:
    """{module name: QuantizedLinear.config() + {"bias": bool}} for every quantized layer of the
    model: what rebuilds its skeleton (a layer may carry a bias its float original lacked, e.g.
    after outlier shift, so the checkpoint records it)."""
    return {name: dict(m.config(), bias=m.bias is not None)
            for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


# Set on a float nn.Linear by a transform that gave it a bias it did not have (outlier shift).
ADDED_BIAS_ATTR = "_myq_added_bias"


def transform_layout(model: nn.Module) -> dict:
    """{module name: spec} of the structural changes myq's calibration transforms made, which the
    stock architecture does not have and a checkpoint loader must rebuild before the state dict
    fits (see `algorithms.smoothquant.rebuild_transforms`):

      {"type": "norm_bias", "features": N}   a norm wrapped in NormWithBias (outlier shift)
      {"type": "input_transform", "input_shift": bool, "input_scale": bool}
                                             a linear wrapped in InputTransformLinear
      {"type": "linear_bias"}                a float nn.Linear given a bias (a quantized layer
                                             records its bias in `QuantizedLinear.config()`)

    Parents come before their children. Wrappers describe themselves (`transform_config()`).
    """
    out = {}
    for name, module in model.named_modules():
        describe = getattr(type(module), "transform_config", None)
        if callable(describe):
            out[name] = module.transform_config()
        elif (isinstance(module, nn.Linear) and not isinstance(module, QuantizedLinear)
              and module.bias is not None and getattr(module, ADDED_BIAS_ATTR, False)):
            out[name] = {"type": "linear_bias"}
    return out


def _check_hf_marks(model):
    """A transformers model marked quantized by another method cannot be re-quantized by myq.

    GGUF is the exception: a GGUF load dequantizes to float weights and only leaves the
    marks (`hf_quantizer`, `config.quantization_config`) behind; they are replaced by myq's.
    """
    previous = getattr(model, "hf_quantizer", None)
    if previous is None or type(previous).__name__ == "MyqHfQuantizer":
        return
    method = getattr(getattr(previous, "quantization_config", None), "quant_method", "?")
    method = str(getattr(method, "value", method))
    if method != "gguf":
        raise ValueError(f"this model is already quantized by transformers' {method!r} method; "
                         "myq quantizes float nn.Linear / Conv1D layers only (load the model unquantized)")


def _attach_hf_config(model, scheme, exclude, group_size, symmetric, threshold=None):
    """A transformers model gets config.quantization_config + hf_quantizer (save_pretrained needs them)."""
    if not hasattr(model, "config") or not hasattr(model, "save_pretrained"):
        return
    try:
        from . import hf
    except ImportError:
        return
    if not hf.transformers_supported():
        return
    hf.attach_quantization_config(model, scheme=scheme if isinstance(scheme, str) else "mixed",
                                  exclude=list(_check_patterns("exclude", exclude)),
                                  group_size=group_size, symmetric=symmetric, threshold=threshold)


# ---- footprint ----------------------------------------------------------------------------

def _tensor_key(t: torch.Tensor):
    if t.device.type == "meta":
        return ("meta", id(t))
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_sizes(model: nn.Module, recurse: bool = False) -> dict:
    """{module name: bytes} of parameters and buffers, each shared tensor counted once.

    recurse=False: bytes a module holds itself (these sum to `get_memory_footprint(model)`);
    recurse=True: bytes of each module with its children. Packed int4 counts its real size
    (uint8 [N, K // 2]).
    """
    seen = set()
    own = OrderedDict()
    for name, module in model.named_modules():
        total = 0
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for _, t in tensors:
            if t is None:
                continue
            key = _tensor_key(t)
            if key in seen:
                continue
            seen.add(key)
            total += _nbytes(t)
        own[name] = total
    if not recurse:
        return own
    totals = OrderedDict((name, 0) for name in own)
    for name, size in own.items():
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in totals:
                totals[prefix] += size
    return totals


def get_memory_footprint(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, each shared (tied) tensor counted once."""
    return sum(module_sizes(model).values())


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the linear layers (weights, scales, zeros; biases included) of the model."""
    sizes = module_sizes(model)
    return sum(sizes[name] for name, m in model.named_modules()
               if isinstance(m, QuantizedLinear) or _is_quantizable(m))
