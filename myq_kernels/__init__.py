"""myq_kernels: quantized linear layers (int8, packed int4) with C++, CUDA and Triton kernels."""
from .backends import backends
from .ops import (
    int4_linear,
    int8_linear,
    int8_linear_dynamic,
    pack_int4,
    select_backend,
    unpack_int4,
)
from .primitives import absmax_quantize, dequantize, quantize_int4_weight, zeropoint_quantize

__version__ = "0.1.0"
