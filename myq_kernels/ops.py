"""The ops: declared once with torch.library, validated once, dispatched to a backend.

Each op `myq::NAME` has one schema and one fake (meta) function here, a default
implementation (the pure-PyTorch reference, so `torch.ops.myq.NAME` works anywhere),
and per-device kernels attached elsewhere: C++ for CPU and CUDA kernels in the
compiled extension (TORCH_LIBRARY_IMPL in csrc/), Triton for CUDA when the compiled
CUDA kernels are absent. The public functions below check their arguments, then call
the backend chosen by `backends.py`: compiled kernel -> Triton -> reference.
"""
import importlib
import importlib.util
import os

import torch

from . import reference
from .backends import extension_has_kernel, forced_backend, triton_interpreted

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_lib = torch.library.Library("myq", "DEF")  # noqa: F841  (keeps the namespace alive)

SCHEMAS = {
    "int8_linear": "int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None) -> Tensor",
    "int8_linear_dynamic":
        "int8_linear_dynamic(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None) -> Tensor",
    "int4_linear": "int4_linear(Tensor x, Tensor packed, Tensor scales, Tensor? zeros, "
                   "int group_size, Tensor? bias=None) -> Tensor",
    "pack_int4": "pack_int4(Tensor q) -> Tensor",
    "unpack_int4": "unpack_int4(Tensor packed) -> Tensor",
}
for _schema in SCHEMAS.values():
    _lib.define(_schema)

# Composite ops: built from the ops above (no backend kernel of their own), declared the same
# way (schema, fake, default kernel) so they work under opcheck / torch.compile.
COMPOSITE_SCHEMAS = {
    "llm_int8_linear": "llm_int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None, "
                       "float threshold=6.0) -> Tensor",
}
for _schema in COMPOSITE_SCHEMAS.values():
    _lib.define(_schema)


# ---- fake functions: output shape and dtype only (torch.compile, meta tensors) -------

def _linear_out(x, n):
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("myq::int8_linear")
def _(x, weight, scale, bias=None):
    return _linear_out(x, weight.shape[0])


@torch.library.register_fake("myq::int8_linear_dynamic")
def _(x, weight, scale, bias=None):
    return _linear_out(x, weight.shape[0])


@torch.library.register_fake("myq::int4_linear")
def _(x, packed, scales, zeros, group_size, bias=None):
    return _linear_out(x, packed.shape[0])


@torch.library.register_fake("myq::llm_int8_linear")
def _(x, weight, scale, bias=None, threshold=6.0):
    return _linear_out(x, weight.shape[0])


@torch.library.register_fake("myq::pack_int4")
def _(q):
    return q.new_empty((*q.shape[:-1], q.shape[-1] // 2), dtype=torch.uint8)


@torch.library.register_fake("myq::unpack_int4")
def _(packed):
    return packed.new_empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=torch.uint8)


# ---- default implementation: the reference, for any device without a kernel ----------

for _name in SCHEMAS:
    torch.library.register_kernel(f"myq::{_name}", "default", getattr(reference, _name))


@torch.library.register_kernel("myq::llm_int8_linear", "default")
def _(x, weight, scale, bias=None, threshold=6.0):
    # the int8 part goes through the registered int8_linear_dynamic kernel of x's device
    return reference.llm_int8_decomposed(x, weight, scale, bias, threshold, torch.ops.myq.int8_linear_dynamic)


# ---- Triton as the CUDA kernel when the extension has none ----------------------------

def _triton_module():
    return importlib.import_module("myq_kernels.triton")


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _register_triton_for_cuda():
    for name in SCHEMAS:
        if extension_has_kernel(name, "cuda"):  # looked up before Triton is registered
            continue

        def kernel(*args, _name=name):
            return getattr(_triton_module(), _name)(*args)

        torch.library.register_kernel(f"myq::{name}", "cuda", kernel)


for _name in SCHEMAS:
    for _device_type in ("cpu", "cuda"):
        extension_has_kernel(_name, _device_type)
if TRITON_INSTALLED:
    _register_triton_for_cuda()


# ---- dispatch ---------------------------------------------------------------------------

def select_backend(op: str, device: torch.device) -> str:
    """The backend that runs `op` on `device`: MYQ_BACKEND if set, else the best available."""
    forced = forced_backend()
    if forced == "cpp" and not extension_has_kernel(op, device.type):
        raise RuntimeError(
            f"MYQ_BACKEND=cpp, but the compiled extension has no {device.type} kernel for {op} "
            "(see myq_kernels.backends())")
    if forced == "triton" and not (TRITON_INSTALLED and (
            device.type == "cuda" or (device.type == "cpu" and triton_interpreted()))):
        raise RuntimeError(
            f"MYQ_BACKEND=triton cannot run on {device.type} here: Triton needs a CUDA device, "
            "or TRITON_INTERPRET=1 for CPU tensors (and `pip install triton`)")
    if forced:
        return forced
    if extension_has_kernel(op, device.type):
        return "cpp"
    if device.type == "cuda" and TRITON_INSTALLED:
        return "triton"
    return "torch"


# The function that runs an op, per (op, device type, MYQ_BACKEND): chosen once, as the
# per-call cost matters for the small layers of a decode step. A forced Triton also depends
# on TRITON_INTERPRET, so it is looked up on every call.
_ROUTES = {}


def _route(op: str, device: torch.device):
    forced = os.environ.get("MYQ_BACKEND")
    run = _ROUTES.get((op, device.type, forced))
    if run is not None:
        return run
    backend = select_backend(op, device)  # raises for a forced backend that cannot run
    if backend == "torch":
        run = getattr(reference, op)
    elif backend == "triton" and not (device.type == "cuda" and not extension_has_kernel(op, "cuda")):
        # Triton is not the registered CUDA kernel here (CPU interpreter, or the compiled
        # CUDA kernels exist and MYQ_BACKEND forces Triton): call it directly.
        run = getattr(_triton_module(), op)
    else:
        run = getattr(torch.ops.myq, op).default
    if backend != "triton" or not forced:
        _ROUTES[(op, device.type, forced)] = run
    return run


def _call(op: str, device: torch.device, *args):
    return _route(op, device)(*args)


# ---- validation -------------------------------------------------------------------------
# Every public op calls these once per call, so they stay cheap on valid input: a message is
# only formatted when a check fails.

def _require_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _require_dtype(name, t, dtypes, what):
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {what}, got {t.dtype}")


def _require_shape(name, t, shape, meaning):
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)} ({meaning}), got {list(t.shape)}")


def _require_same_device(x, **others):
    device = x.device
    for t in others.values():
        if t is not None and t.device != device:
            where = ", ".join(f"{k} on {v.device}" for k, v in (("x", x), *others.items()) if v is not None)
            raise ValueError(f"all tensors must be on one device; got {where}")


def _check_activation(x):
    _require_tensor("x", x)
    _require_dtype("x", x, FLOAT_DTYPES, "float32, bfloat16 or float16")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension [..., K], got a 0-dim tensor")


def _check_float_param(name, t, shape, meaning):
    _require_tensor(name, t)
    _require_dtype(name, t, FLOAT_DTYPES, "a float32, bfloat16 or float16 tensor")
    _require_shape(name, t, shape, meaning)


def _check_int8_args(x, weight, scale, bias):
    _check_activation(x)
    _require_tensor("weight", weight)
    _require_dtype("weight", weight, (torch.int8,), "int8 (quantize it first)")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {list(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x.shape[-1] ({x.shape[-1]}) must equal weight.shape[1] (K={k})")
    _check_float_param("scale", scale, (n,), "one per output channel")
    if bias is not None:
        _check_float_param("bias", bias, (n,), "one per output channel")
    _require_same_device(x, weight=weight, scale=scale, bias=bias)


def _check_packed(name, packed):
    _require_tensor(name, packed)
    _require_dtype(name, packed, (torch.uint8,), "uint8 holding two 4-bit values per byte")


def _check_int4_args(x, packed, scales, zeros, group_size, bias):
    _check_activation(x)
    _check_packed("packed", packed)
    if packed.dim() != 2:
        raise ValueError(f"packed must be 2-D [N, K // 2], got shape {list(packed.shape)}")
    n = packed.shape[0]
    k = x.shape[-1]
    if k % 2:
        raise ValueError(f"x.shape[-1] (K={k}) must be even: int4 weights pack two values per byte")
    if packed.shape[1] * 2 != k:
        raise ValueError(f"packed.shape[1] ({packed.shape[1]}) must equal K // 2 = {k // 2} "
                         f"for x.shape[-1] = {k}")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size ({group_size}) must be a positive even divisor of K ({k}); "
                         f"use group_size=K for one scale per output channel")
    shape = (n, k // group_size)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None or name == "scales":
            _check_float_param(name, t, shape, "[N, K // group_size]")
    if bias is not None:
        _check_float_param("bias", bias, (n,), "one per output channel")
    _require_same_device(x, packed=packed, scales=scales, zeros=zeros, bias=bias)


# ---- public ops ---------------------------------------------------------------------------

def int8_linear(x, weight, scale, bias=None):
    """W8A16: `(x @ weight.T) * scale + bias` with int8 `weight` [N, K], `scale` [N].

    x is float32/bfloat16/float16 with any batch dims [..., K]; the result has x's dtype.
    """
    _check_int8_args(x, weight, scale, bias)
    return _call("int8_linear", x.device, x, weight, scale, bias)


def int8_linear_dynamic(x, weight, scale, bias=None):
    """W8A8: x is quantized per token (row absmax / 127) on the fly, int8 x int8 products
    accumulate in int32 and are dequantized by token scale x channel `scale` [N]."""
    _check_int8_args(x, weight, scale, bias)
    return _call("int8_linear_dynamic", x.device, x, weight, scale, bias)


def int4_linear(x, packed, scales, zeros, group_size, bias=None):
    """W4A16, group-wise: weight[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size.

    `packed` is uint8 [N, K // 2] from `pack_int4`; `scales` and `zeros` are [N, K // group_size];
    `zeros=None` means symmetric (zero point 8). group_size=K gives one scale per channel.
    """
    _check_int4_args(x, packed, scales, zeros, group_size, bias)
    return _call("int4_linear", x.device, x, packed, scales, zeros, group_size, bias)


def pack_int4(q):
    """Packs 4-bit values 0..15 [..., K] (K even) into uint8 [..., K // 2].

    Nibble order: byte i holds element 2*i in its low nibble and 2*i + 1 in its high nibble.
    """
    _require_tensor("q", q)
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor of values 0..15, got {q.dtype}")
    if q.dim() < 1 or q.shape[-1] % 2:
        raise ValueError(f"q.shape[-1] must be even to pack two values per byte, got shape {list(q.shape)}")
    if q.numel() and not torch.compiler.is_compiling():
        low, high = int(q.min()), int(q.max())
        if low < 0 or high > 15:
            raise ValueError(f"q must hold values in 0..15 to pack as int4, got range [{low}, {high}]")
    return _call("pack_int4", q.device, q.to(torch.uint8))


def unpack_int4(packed):
    """Inverse of `pack_int4`: uint8 [..., K // 2] -> uint8 values 0..15 [..., K]."""
    _check_packed("packed", packed)
    if packed.dim() < 1:
        raise ValueError("packed must have at least one dimension")
    return _call("unpack_int4", packed.device, packed)


def llm_int8_linear(x, weight, scale, bias=None, threshold=6.0):
    """LLM.int8() mixed decomposition with int8 `weight` [N, K] and per-channel `scale` [N].

    Feature columns of x whose magnitude exceeds `threshold` in any token (the outliers) are
    multiplied in floating point with the matching dequantized weight columns; the others go
    through the W8A8 int8 GEMM (`int8_linear_dynamic`: per-token x per-channel scales). The two
    partial results are summed (+ bias). threshold=inf gives plain W8A8.
    """
    _check_int8_args(x, weight, scale, bias)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    threshold = float(threshold)
    if not threshold >= 0:  # also rejects NaN
        raise ValueError(f"threshold must be >= 0 (the outlier magnitude), got {threshold}")
    if torch.compiler.is_compiling():  # the outlier split is data-dependent: keep it one opaque op
        return torch.ops.myq.llm_int8_linear(x, weight, scale, bias, threshold)
    # The int8 part runs on the backend chosen for int8_linear_dynamic.
    return reference.llm_int8_decomposed(
        x, weight, scale, bias, threshold,
        lambda xi, w, s, b: _call("int8_linear_dynamic", xi.device, xi, w, s, b))
