"""Quantization primitives: absmax (symmetric) and zero-point (asymmetric) quantizers.

One code path serves every granularity, named by `granularity`:
  "tensor"   one scale for the whole tensor          -> scale shape []
  "channel"  one scale per row (output channel)      -> scale shape w.shape[:-1]
  int g      one scale per g consecutive elements of a row (groups) -> w.shape[:-1] + (K // g,)
Scales (and zero points) are float32. `dequantize` undoes either quantizer; the
rounding error of every element is at most half a step (scale / 2).
"""
import torch

from . import ops


def _grouped(w: torch.Tensor, granularity):
    """w viewed as [..., groups, group_len] for the given granularity, and the scale shape."""
    if granularity == "tensor":
        return w.reshape(1, -1), ()
    if w.dim() < 1:
        raise ValueError("w must have at least one dimension for per-channel or per-group quantization")
    k = w.shape[-1]
    if granularity == "channel":
        return w.unsqueeze(-2), tuple(w.shape[:-1])
    if isinstance(granularity, bool) or not isinstance(granularity, int):
        raise ValueError(f"granularity must be 'tensor', 'channel' or a group size (int), got {granularity!r}")
    if granularity <= 0 or k % granularity:
        raise ValueError(f"group size {granularity} must be a positive divisor of the last dimension ({k})")
    return w.reshape(*w.shape[:-1], k // granularity, granularity), (*w.shape[:-1], k // granularity)


def _check_input(w, bits):
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
        raise TypeError(f"w must be a floating-point tensor, got {getattr(w, 'dtype', type(w))}")
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if not torch.isfinite(w).all():
        raise ValueError("w holds inf or NaN values; they cannot be quantized")


def absmax_quantize(w: torch.Tensor, bits: int = 8, granularity="channel"):
    """Symmetric: scale = max|w| / (2^(bits-1) - 1), q = round(w / scale), q as int8.

    Returns (q, scale); q lies in [-(2^(bits-1) - 1), 2^(bits-1) - 1].
    """
    _check_input(w, bits)
    qmax = 2 ** (bits - 1) - 1
    groups, scale_shape = _grouped(w.float(), granularity)
    scale = groups.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(groups / safe).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), scale.reshape(scale_shape)


def zeropoint_quantize(w: torch.Tensor, bits: int = 8, granularity="channel"):
    """Asymmetric: maps [min(w, 0), max(w, 0)] onto 0 .. 2^bits - 1.

    Returns (q, scale, zero): q as uint8, zero float32 holding whole numbers, and
    w ~= (q - zero) * scale. Including 0 in the range keeps zero exact and the error <= scale / 2.
    """
    _check_input(w, bits)
    qmax = 2 ** bits - 1
    groups, scale_shape = _grouped(w.float(), granularity)
    low = groups.amin(dim=-1, keepdim=True).clamp(max=0)
    high = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (high - low) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / safe).clamp_(0, qmax)
    q = (torch.round(groups / safe) + zero).clamp_(0, qmax).to(torch.uint8)
    return q.reshape(w.shape), scale.reshape(scale_shape), zero.reshape(scale_shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero=None, granularity="channel"):
    """float32 `(q - zero) * scale` for either quantizer's output (zero=None: symmetric)."""
    groups, _ = _grouped(q.float(), granularity)
    per_group = groups.shape[:-1] + (1,)
    if zero is not None:
        groups = groups - zero.float().reshape(per_group)
    return (groups * scale.float().reshape(per_group)).reshape(q.shape)


def quantize_int4_weight(w: torch.Tensor, group_size: int, symmetric: bool = False):
    """Quantizes a float weight [N, K] to what `int4_linear` consumes.

    Returns (packed uint8 [N, K // 2], scales [N, K // group_size], zeros or None).
    Symmetric values are stored offset by 8 (the op's implied zero point).
    """
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {list(w.shape)}")
    if symmetric:
        q, scale = absmax_quantize(w, bits=4, granularity=group_size)
        return ops.pack_int4((q + 8).to(torch.uint8)), scale, None
    q, scale, zero = zeropoint_quantize(w, bits=4, granularity=group_size)
    return ops.pack_int4(q), scale, zero
