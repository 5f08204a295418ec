"""Pure-PyTorch implementations of every op: the ground truth in every test.

They favour clarity over speed. Inputs are assumed validated (see ops.py). Floating
arithmetic runs in float32, or float64 when given float64 inputs, so a test can ask
for an exact answer; the result has x's dtype.

Int4 storage (shared by every backend): `packed[..., i]` holds element 2*i in its low
nibble and element 2*i + 1 in its high nibble; nibbles are unsigned 0..15. A weight
is `(q - zero) * scale` per group, and `zero = 8` when zeros are not given
(symmetric).
"""
import torch

INT4_SYMMETRIC_ZERO = 8


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _add_bias(y: torch.Tensor, bias):
    return y if bias is None else y + bias.to(y.dtype)


def int8_linear(x, weight, scale, bias=None):
    dt = _compute_dtype(x)
    y = (x.to(dt) @ weight.to(dt).T) * scale.to(dt)
    return _add_bias(y, bias).to(x.dtype)


def quantize_per_token(x):
    """Row-wise symmetric int8: scale = max|row| / 127 (float32), q = round(x / scale)."""
    xf = x.float()
    # amax over an empty row (K = 0) raises; its scale is 0 like an all-zero row's
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0 if xf.shape[-1] else xf.new_zeros(*xf.shape[:-1], 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / safe).clamp_(-127, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def int8_linear_dynamic(x, weight, scale, bias=None):
    q, row_scale = quantize_per_token(x)
    # float64 holds every int32 partial sum exactly, so this is the int32 product.
    acc = q.double() @ weight.double().T
    dt = _compute_dtype(x)
    y = acc.to(dt) * row_scale.to(dt).unsqueeze(-1) * scale.to(dt)
    return _add_bias(y, bias).to(x.dtype)


def pack_int4(q):
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed):
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def dequantize_int4(packed, scales, zeros, group_size, dtype=torch.float32):
    q = unpack_int4(packed).to(dtype)
    s = scales.to(dtype).repeat_interleave(group_size, dim=-1)
    z = INT4_SYMMETRIC_ZERO if zeros is None else zeros.to(dtype).repeat_interleave(group_size, dim=-1)
    return (q - z) * s


def int4_linear(x, packed, scales, zeros, group_size, bias=None):
    dt = _compute_dtype(x)
    w = dequantize_int4(packed, scales, zeros, group_size, dt)
    return _add_bias(x.to(dt) @ w.T, bias).to(x.dtype)


# ---- LLM.int8() mixed decomposition --------------------------------------------------------

def llm_int8_outlier_mask(x, threshold):
    """bool [K]: feature columns of x [..., K] whose magnitude exceeds `threshold` in any token."""
    k = x.shape[-1]
    flat = x.reshape(-1, k)
    if flat.shape[0] == 0:
        return torch.zeros(k, dtype=torch.bool, device=x.device)
    return flat.abs().amax(dim=0) > threshold


def llm_int8_decomposed(x, weight, scale, bias, threshold, int8_dynamic):
    """LLM.int8(): outlier columns (|x| > threshold in any token) in floating point against the
    dequantized weight columns, the rest through `int8_dynamic` (per-token x per-channel int8
    GEMM); the two partial products are summed. Vectorized: no loop over columns."""
    dt = _compute_dtype(x)
    mask = llm_int8_outlier_mask(x, threshold)
    cols = mask.nonzero().squeeze(-1)
    y = int8_dynamic(x.masked_fill(mask, 0), weight, scale, None).to(dt)
    if cols.numel():
        w_out = weight.index_select(1, cols).to(dt) * scale.to(dt).unsqueeze(-1)
        y = y + x.index_select(-1, cols).to(dt) @ w_out.T
    return _add_bias(y, bias).to(x.dtype)


def llm_int8_linear(x, weight, scale, bias=None, threshold=6.0):
    return llm_int8_decomposed(x, weight, scale, bias, threshold, int8_linear_dynamic)
