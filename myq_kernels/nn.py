"""QuantizedLinear: one module for every quantization scheme.

A scheme is a `Scheme` record in `SCHEMES`: which buffers a layer holds (names, shapes,
dtypes), how a float weight becomes those buffers, how `forward` runs (one op from
`myq_kernels.ops`) and how the float weight is recovered. Adding a scheme (e.g.
`llm_int8`) is one `register_scheme(...)` call.

Stored tensors are buffers, not parameters (nothing here is trainable):
  w8a16, w8a8   weight int8 [N, K], weight_scale float32 [N]
  w4a16         weight_packed uint8 [N, K // 2], weight_scale float32 [N, K // g],
                weight_zero float32 [N, K // g] (asymmetric only)
  all           bias [N] in the original layer's dtype (or None)
Scheme options (`Scheme.extra`, e.g. llm_int8's outlier `threshold`) are plain attributes,
recorded by `config()` so a saved checkpoint rebuilds them.
`module.weight` is the stored weight for every scheme (w4a16: the packed uint8 tensor).
Scales and zero points stay float32 even when the model is cast to bf16/fp16.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import ops, primitives, reference

DEFAULT_GROUP_SIZE = 128


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    # (out_features, in_features, group_size, symmetric) -> {buffer: (shape, dtype)}
    layout: Callable
    # (float32 weight [N, K], group_size, symmetric) -> {buffer: tensor}
    quantize: Callable
    # (module, x) -> y
    forward: Callable
    # module -> float32 weight [N, K]
    dequantize: Callable
    uses_group_size: bool = False
    # buffers that must stay float32 whatever the model dtype
    float32_buffers: tuple = ("weight_scale",)
    # scheme options and their defaults ({"threshold": 6.0} for llm_int8): module attributes,
    # part of `QuantizedLinear.config()`
    extra: dict = field(default_factory=dict)


SCHEMES: dict = {}


def register_scheme(scheme: Scheme, replace: bool = False):
    """Adds a scheme to `SCHEMES` (QuantizedLinear, quantize_model, MyqConfig and the CLI read it)."""
    if scheme.name in SCHEMES and not replace:
        raise ValueError(f"scheme {scheme.name!r} is already registered")
    SCHEMES[scheme.name] = scheme
    return scheme


def check_scheme(scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if not isinstance(scheme, str) or scheme.lower() not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(sorted(SCHEMES))}; got {scheme!r}")
    return SCHEMES[scheme.lower()]


def check_group_size(group_size, in_features: int):
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__} ({group_size!r})")
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size must be a positive even number, got {group_size}")
    if in_features % group_size:
        raise ValueError(
            f"group_size ({group_size}) must divide in_features ({in_features}); use "
            f"group_size={in_features} for one scale per output channel, or a divisor such as "
            f"{fit_group_size(group_size, in_features)}")


def check_threshold(threshold) -> float:
    """The LLM.int8() outlier threshold as a float >= 0 (inf: no outliers, plain W8A8)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__} ({threshold!r})")
    threshold = float(threshold)
    if not threshold >= 0:  # also rejects NaN
        raise ValueError(f"threshold must be >= 0 (the outlier magnitude), got {threshold}")
    return threshold


_OPTION_CHECKS = {"threshold": check_threshold}


def scheme_options(spec, given: dict, strict: bool = True) -> dict:
    """The scheme's options (`spec.extra`) filled from `given` ({name: value or None}), validated.

    strict: an option given (not None) that the scheme does not take raises ValueError;
    otherwise it is ignored (a model-wide default on a layer of another scheme)."""
    spec = check_scheme(spec)
    if strict:
        for name, value in given.items():
            if value is not None and name not in spec.extra:
                takers = sorted(s.name for s in SCHEMES.values() if name in s.extra)
                raise ValueError(f"{name} applies to the {' / '.join(takers) or 'no'} scheme only, "
                                 f"not {spec.name!r}")
    out = {}
    for name, default in spec.extra.items():
        value = given.get(name)
        out[name] = _OPTION_CHECKS.get(name, lambda v: v)(default if value is None else value)
    return out


def fit_group_size(group_size: int, in_features: int):
    """The largest even divisor of in_features that is <= group_size (None if K is odd)."""
    if in_features % 2:
        return None
    for g in range(min(group_size, in_features), 1, -1):
        if g % 2 == 0 and in_features % g == 0:
            return g
    return None


# ---- the schemes --------------------------------------------------------------------------

# The forward functions read the buffers from `module._buffers` directly: through
# nn.Module's __getattr__ each read costs ~1 us, which adds up over the small layers of a
# decode step (SmolLM2: 210 layers per token).
def _int8_buffers(m):
    b = m._buffers
    return b["weight"], b["weight_scale"], b["bias"]


def _int4_buffers(m):
    b = m._buffers
    return b["weight_packed"], b["weight_scale"], b["weight_zero"]


def _int8_layout(n, k, group_size, symmetric):
    return {"weight": ((n, k), torch.int8), "weight_scale": ((n,), torch.float32)}


def _int8_quantize(w, group_size, symmetric):
    q, scale = primitives.absmax_quantize(w, bits=8, granularity="channel")
    return {"weight": q, "weight_scale": scale}


def _int8_dequantize(m):
    return m.weight.float() * m.weight_scale.float().unsqueeze(-1)


def _int4_layout(n, k, group_size, symmetric):
    layout = {"weight_packed": ((n, k // 2), torch.uint8),
              "weight_scale": ((n, k // group_size), torch.float32)}
    if not symmetric:
        layout["weight_zero"] = ((n, k // group_size), torch.float32)
    return layout


def _int4_quantize(w, group_size, symmetric):
    packed, scales, zeros = primitives.quantize_int4_weight(w, group_size, symmetric=symmetric)
    out = {"weight_packed": packed, "weight_scale": scales}
    if not symmetric:
        out["weight_zero"] = zeros
    return out


def _int4_dequantize(m):
    return reference.dequantize_int4(m.weight_packed, m.weight_scale, m.weight_zero, m.group_size)


register_scheme(Scheme(
    "w8a16", "int8 weights (per-channel absmax), float activations",
    _int8_layout, _int8_quantize,
    lambda m, x: ops.int8_linear(x, *_int8_buffers(m)),
    _int8_dequantize))
register_scheme(Scheme(
    "w8a8", "int8 weights (per-channel absmax), int8 activations quantized per token on the fly",
    _int8_layout, _int8_quantize,
    lambda m, x: ops.int8_linear_dynamic(x, *_int8_buffers(m)),
    _int8_dequantize))
register_scheme(Scheme(
    "w4a16", "int4 weights packed two per byte, group-wise scales (and zero points)",
    _int4_layout, _int4_quantize,
    lambda m, x: ops.int4_linear(x, *_int4_buffers(m),
                                 m.group_size, m._buffers["bias"]),
    _int4_dequantize, uses_group_size=True, float32_buffers=("weight_scale", "weight_zero")))

LLM_INT8_THRESHOLD = 6.0
register_scheme(Scheme(
    "llm_int8", "LLM.int8(): int8 weights (per-channel absmax); activation columns above a threshold "
                "(6.0) in floating point, the rest int8 per token",
    _int8_layout, _int8_quantize,
    lambda m, x: ops.llm_int8_linear(x, *_int8_buffers(m), m.threshold),
    _int8_dequantize, extra={"threshold": LLM_INT8_THRESHOLD}))


# ---- the module ---------------------------------------------------------------------------

def is_conv1d(module) -> bool:
    """GPT-2 style transformers.pytorch_utils.Conv1D (weight [in, out])."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def linear_dims(module):
    """(in_features, out_features, float weight [out, in]) of an nn.Linear or a Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.weight
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1], module.weight.t()
    raise TypeError(f"expected an nn.Linear or transformers Conv1D, got {type(module).__name__}")


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored quantized; `forward(x)` runs one myq op.

    Build one from a float layer with `QuantizedLinear.from_linear(linear, scheme=...)`.
    The constructor makes empty buffers of the right shapes (what a checkpoint loader fills).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str = "w8a16",
                 group_size: int = None, symmetric: bool = None, device=None, dtype=None,
                 threshold: float = None):
        super().__init__()
        spec = check_scheme(scheme)
        options = scheme_options(spec, {"threshold": threshold})
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if spec.uses_group_size:
            if group_size is None:
                group_size = min(DEFAULT_GROUP_SIZE, in_features)
            if in_features % 2:
                raise ValueError(f"scheme {spec.name!r} packs two 4-bit values per byte, so in_features "
                                 f"must be even; got {in_features}")
            check_group_size(group_size, in_features)
            symmetric = False if symmetric is None else bool(symmetric)
        else:
            group_size = None
            symmetric = True
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = spec.name
        self.group_size = group_size
        self.symmetric = symmetric
        for name, value in options.items():  # llm_int8: threshold
            setattr(self, name, value)
        layout = spec.layout(out_features, in_features, group_size, symmetric)
        for name, (shape, buf_dtype) in layout.items():
            self.register_buffer(name, torch.empty(shape, dtype=buf_dtype, device=device))
        if spec.name == "w4a16" and "weight_zero" not in layout:
            self.register_buffer("weight_zero", None)
        bias_dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    def __getattr__(self, name):
        # `.weight` is the stored quantized weight for every scheme: w4a16 keeps it as
        # `weight_packed` (uint8), so model code that reads `module.weight` (init functions,
        # device / dtype checks) finds a tensor instead of an AttributeError.
        if name == "weight":
            buffers = self.__dict__.get("_buffers", {})
            if buffers.get("weight") is None and buffers.get("weight_packed") is not None:
                return buffers["weight_packed"]
        return super().__getattr__(name)

    @property
    def spec(self) -> Scheme:
        return SCHEMES[self.scheme]

    @classmethod
    def from_linear(cls, linear: nn.Module, scheme: str = "w8a16", group_size: int = DEFAULT_GROUP_SIZE,
                    symmetric: bool = None, threshold: float = None) -> "QuantizedLinear":
        """Quantizes an nn.Linear, or a transformers Conv1D (GPT-2; weight stored [in, out]).

        threshold: llm_int8 only, the outlier magnitude (default 6.0)."""
        spec = check_scheme(scheme)
        scheme_options(spec, {"threshold": threshold})  # bad options fail before any work
        in_features, out_features, weight = linear_dims(linear)
        if weight.device.type == "meta":
            raise ValueError("cannot quantize a layer on the meta device (load its weights first)")
        if spec.uses_group_size:
            if in_features % 2:
                raise ValueError(f"scheme {spec.name!r} needs an even in_features, got {in_features}")
            if group_size is None:
                group_size = min(DEFAULT_GROUP_SIZE, in_features)
            check_group_size(group_size, in_features)
        bias = getattr(linear, "bias", None)
        module = cls(in_features, out_features, bias=bias is not None, scheme=spec.name,
                     group_size=group_size, symmetric=symmetric, device="meta", threshold=threshold)
        with torch.no_grad():
            tensors = spec.quantize(weight.detach().float(), module.group_size, module.symmetric)
            for name, t in tensors.items():
                setattr(module, name, t.contiguous())
            if bias is not None:
                module.bias = bias.detach().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.forward(self, x)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer computes with."""
        return self.spec.dequantize(self)

    def dequantize(self, dtype=None) -> nn.Linear:
        """A float nn.Linear with the dequantized weight (dtype: the bias's, else float32)."""
        if dtype is None:
            dtype = self.bias.dtype if self.bias is not None else torch.float32
        device = self.weight_scale.device
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight().to(dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias.to(dtype))
        return linear

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) casts float buffers; scales and zeros keep float32 (moved only).
        keep = {name: self._buffers[name] for name in self.spec.float32_buffers
                if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}")
        if self.spec.uses_group_size:
            text += f", group_size={self.group_size}, symmetric={self.symmetric}"
        for name in self.spec.extra:
            text += f", {name}={getattr(self, name)}"
        return text

    def config(self) -> dict:
        """This layer's quantization options: scheme, group_size / symmetric (w4a16), the
        scheme's options (llm_int8: threshold). With the bias flag (`model.quantized_layout`)
        it rebuilds the layer's empty skeleton (used by the Hugging Face integration)."""
        out = {"scheme": self.scheme}
        if self.spec.uses_group_size:
            out.update(group_size=self.group_size, symmetric=self.symmetric)
        for name in self.spec.extra:
            out[name] = getattr(self, name)
        return out
