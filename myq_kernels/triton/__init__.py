"""Triton kernels of the ops: the GPU fallback when the compiled CUDA kernels are absent,
and, through the Triton interpreter, runnable on CPU tensors (TRITON_INTERPRET=1 with
MYQ_BACKEND=triton routes the public ops here; the kernels pick compiled vs interpreted
per call from the tensors' device, see _common.py).

Same signatures and semantics as myq_kernels.reference; x may have batch dims [..., K] and
the result has x's dtype. Inputs are assumed validated by myq_kernels.ops.
"""
from .int4_linear import int4_linear
from .int4_pack import pack_int4, unpack_int4
from .int8_dynamic import int8_linear_dynamic, quantize_per_token
from .int8_linear import int8_linear

__all__ = ["int8_linear", "int8_linear_dynamic", "int4_linear", "pack_int4", "unpack_int4",
           "quantize_per_token"]
