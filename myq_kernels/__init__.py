"""myq_kernels: quantized linear layers (int8, packed int4) with C++, CUDA and Triton kernels."""
from .backends import backends
from .ops import (
    int4_linear,
    int8_linear,
    int8_linear_dynamic,
    llm_int8_linear,
    pack_int4,
    select_backend,
    unpack_int4,
)
from .primitives import absmax_quantize, dequantize, quantize_int4_weight, zeropoint_quantize

from .model import get_memory_footprint, module_sizes, quantize_model
from .nn import SCHEMES, QuantizedLinear
from ._hf_hook import install as _install_hf_hook

__version__ = "0.1.0"

_install_hf_hook()  # registers quant_method "myq" with transformers, now or when it is imported


def __getattr__(name):
    # MyqConfig / MyqHfQuantizer live in myq_kernels.hf, which imports transformers (slow; optional).
    if name in ("MyqConfig", "MyqHfQuantizer"):
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'myq_kernels' has no attribute {name!r}")
