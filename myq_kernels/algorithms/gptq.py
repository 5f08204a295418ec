"""GPTQ (Frantar et al. 2022): quantize weights column by column, updating the not yet
quantized columns to compensate each column's error using the layer's Hessian H = 2 X^T X.

- `gptq_quantize_weight(W, H, ...)`: one layer. Returns the dequantized weight and the
  integers / scales / zero points in myq's storage conventions (`primitives`): 4-bit symmetric
  as absmax / 7 with values stored +8, asymmetric as zero-point uint 0..15; 8-bit per-channel
  absmax / 127. Groups are contiguous in the original column order, which is what
  `int4_linear` consumes; with act-order and groups the group parameters are computed on the
  original order first (the "static groups" variant), so the layout stays valid.
- `HessianAccumulator`: running H = 2/n sum x^T x over calibration tokens.
- `gptq_quantize_model(model, batches, scheme="w4a16", ...)`: sequential through the decoder
  blocks, each block fed the outputs of the already-quantized previous blocks; within a
  block, linears sharing an input (q/k/v, gate/up) are quantized together, in the order the
  block calls them, each group's inputs recomputed after the previous groups are quantized.
  Only one input group's Hessian is held at a time. The result is a model of QuantizedLinear
  layers (w4a16 / w8a16 / w8a8 / llm_int8 buffers) that saves and loads like `quantize_model`'s.

Clip search (default on): each group's range is shrunk by the factor in CLIP_GRID with the
least sum |w - q|^2.4, which generalises better to text outside the calibration set.

Damping: percdamp (0.01) x mean(diag H) is added to the diagonal; if the Cholesky
factorization still fails (H not positive definite), damping grows 10x and it retries.
Dead inputs (H_jj == 0: a channel that is always zero) get H_jj = 1 and weight column 0.
"""
import math
import warnings

import torch
from torch import nn

from .. import ops
from ..model import _attach_hf_config, _set_submodule, plan_quantization
from ..nn import DEFAULT_GROUP_SIZE, QuantizedLinear, check_scheme, linear_dims
from .calibration import (block_hidden, block_output, capture_block_inputs, find_blocks, is_linear,
                          with_hidden)

DEFAULT_PERCDAMP = 0.01
CLIP_GRID = [1 - i / 100 for i in range(20)]  # range kept: 100% .. 81%
CLIP_NORM = 2.4
MAX_DAMP_RETRIES = 8


class HessianAccumulator:
    """H = 2/n sum_tokens x^T x (float32 [K, K]), updated batch by batch."""

    def __init__(self, k: int, device=None):
        self.H = torch.zeros(k, k, device=device)
        self.n = 0

    def add(self, x: torch.Tensor):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        t = x.shape[0]
        if t == 0:
            return
        self.H *= self.n / (self.n + t)
        self.n += t
        x = math.sqrt(2.0 / self.n) * x
        self.H += x.T @ x


# ---- one layer ------------------------------------------------------------------------------

def _params(w: torch.Tensor, bits: int, symmetric: bool, clip_search: bool = False):
    """Per-row quantization parameters of w [N, g] in primitives' conventions: (scale, zero).

    clip_search: shrink each row's range by the factor in CLIP_GRID that minimises
    sum |w - q(w)|^CLIP_NORM (the GPTQ reference quantizer's "mse" option): at 4 bits a
    slightly clipped range rounds the bulk of the weights more finely than it loses on the
    few largest ones.
    """
    low, high = w.amin(dim=1), w.amax(dim=1)
    scale, zero = _range_params(low, high, bits, symmetric)
    if not clip_search:
        return scale, zero
    best = torch.full_like(scale, float("inf"))
    for shrink in CLIP_GRID:
        s, z = _range_params(shrink * low, shrink * high, bits, symmetric)
        _, deq = _quantize_column(w, s.unsqueeze(1), z.unsqueeze(1), bits, symmetric)
        err = (w - deq).abs_().pow_(CLIP_NORM).sum(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def _range_params(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool):
    if symmetric:
        return torch.maximum(low.abs(), high.abs()) / (2 ** (bits - 1) - 1), torch.zeros_like(low)
    qmax = 2 ** bits - 1
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = (high - low) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-low / safe).clamp(0, qmax)


def _quantize_column(w, scale, zero, bits, symmetric):
    """(integer q, dequantized value) of column w [N] with per-row scale / zero."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = torch.round(w / safe).clamp(-qmax, qmax)
        return q, q * scale
    q = (torch.round(w / safe) + zero).clamp(0, 2 ** bits - 1)
    return q, (q - zero) * scale


def _inverse_hessian_cholesky(H: torch.Tensor, percdamp: float, name: str = ""):
    """Upper Cholesky factor of H^-1 after damping; more damping until it factorizes."""
    diag_mean = torch.mean(torch.diag(H)).item()
    if not math.isfinite(diag_mean) or diag_mean <= 0:
        diag_mean = 1.0
    damp = percdamp
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    for attempt in range(MAX_DAMP_RETRIES + 1):
        Hd = H + damp * diag_mean * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                if attempt:
                    warnings.warn(f"GPTQ{' ' + name if name else ''}: Hessian not positive definite with "
                                  f"percdamp={percdamp}; factorized with damping {damp:g} x mean(diag H)")
                return U, damp
        damp = damp * 10 if damp > 0 else 1e-4
    raise RuntimeError(f"GPTQ{' ' + name if name else ''}: the Hessian could not be factorized even with "
                       f"damping {damp / 10:g} x mean(diag H); check the calibration inputs for inf/NaN")


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = None,
                         symmetric: bool = True, act_order: bool = False, percdamp: float = DEFAULT_PERCDAMP,
                         blocksize: int = 128, static_groups: bool = None, clip_search: bool = True, name: str = ""):
    """GPTQ for one weight W [N, K] with Hessian H [K, K].

    group_size None (or K): one scale per output row. Returns a dict: "weight" (dequantized,
    float32 [N, K], original column order), "q" (integers: int8 in -qmax..qmax if symmetric,
    else 0..2^bits-1), "scale" and "zero" ([N, K // group_size]; zero is None if symmetric),
    "damp" (the damping used) and "loss" (the GPTQ objective sum (w - q)^2 / [H^-1]_jj / 2).
    static_groups: group parameters from the original W before any update (default: only with
    act_order and groups, where it keeps groups contiguous in the original order).
    clip_search: each group's range is the clipped one with the least |w - q|^2.4 error.
    """
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D [N, K], got shape {list(W.shape)}")
    n, k = W.shape
    if H.shape != (k, k):
        raise ValueError(f"H must be [K, K] = [{k}, {k}] for W of shape {list(W.shape)}, got {list(H.shape)}")
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if group_size is None or group_size == -1:
        group_size = k
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or k % group_size:
        raise ValueError(f"group_size must be a positive divisor of K ({k}), got {group_size!r}")
    if not (isinstance(percdamp, (int, float)) and percdamp >= 0):
        raise ValueError(f"percdamp must be a number >= 0, got {percdamp!r}")
    if not torch.isfinite(W).all():
        raise ValueError("W holds inf or NaN values")
    if not torch.isfinite(H).all():
        raise ValueError(f"H{' of ' + name if name else ''} holds inf or NaN values (the calibration inputs do)")
    if static_groups is None:
        static_groups = act_order and group_size < k
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    n_groups = k // group_size

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    scales = torch.zeros(n, n_groups, device=W.device)
    zeros = torch.zeros(n, n_groups, device=W.device)
    have = [False] * n_groups
    if static_groups or group_size == k:
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = _params(W[:, g * group_size:(g + 1) * group_size], bits, symmetric, clip_search)
        have = [True] * n_groups

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    group_of = (perm if perm is not None else torch.arange(k, device=W.device)) // group_size
    group_of = group_of.tolist()

    Hinv, damp = _inverse_hessian_cholesky(H, percdamp, name)
    del H

    # with groups in original order (no act-order), blocks aligned to groups keep each group in one block
    if not act_order and group_size < k:
        blocksize = max(group_size, (blocksize // group_size) * group_size)
    # The column loop is thousands of tiny vector ops: one thread avoids intra-op sync overhead
    # (8x faster on a busy 2-core machine); the big block updates are still matmuls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Q, Qint, loss = _column_loop(W, Hinv, scales, zeros, have, group_of, group_size, bits, symmetric,
                                     clip_search, blocksize, k)
    finally:
        torch.set_num_threads(threads)
    if perm is not None:
        inv = torch.argsort(perm)
        Q = Q[:, inv]
        Qint = Qint[:, inv]
    qdtype = torch.int8 if symmetric else torch.uint8
    return {"weight": Q, "q": Qint.to(qdtype), "scale": scales, "zero": None if symmetric else zeros,
            "damp": damp, "loss": loss}


def _column_loop(W, Hinv, scales, zeros, have, group_of, group_size, bits, symmetric, clip_search, blocksize, k):
    Q = torch.zeros_like(W)
    Qint = torch.zeros_like(W)
    losses = torch.zeros(W.shape[0], device=W.device)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Qi1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not have[g]:  # have: list of bool
                # dynamic groups (original order): parameters from the updated weights of this group
                start = g * group_size - i1
                scales[:, g], zeros[:, g] = _params(W1[:, start:start + group_size], bits, symmetric,
                                                      clip_search)
                have[g] = True
            w = W1[:, i]
            d = Hinv1[i, i]
            q, deq = _quantize_column(w, scales[:, g], zeros[:, g], bits, symmetric)
            Q1[:, i] = deq
            Qi1[:, i] = q
            err = (w - deq) / d
            losses += err * err
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        Qint[:, i1:i2] = Qi1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q, Qint, float(losses.sum()) / 2


# ---- buffers of a QuantizedLinear ------------------------------------------------------------

SCHEME_BITS = {"w4a16": 4, "w8a16": 8, "w8a8": 8, "llm_int8": 8}


def quantized_linear_from_gptq(linear: nn.Module, H: torch.Tensor, scheme: str = "w4a16",
                               group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = None,
                               act_order: bool = False, percdamp: float = DEFAULT_PERCDAMP,
                               clip_search: bool = True, name: str = "") -> QuantizedLinear:
    """A QuantizedLinear with GPTQ-quantized buffers in exactly the scheme's layout."""
    spec = check_scheme(scheme)
    if spec.name not in SCHEME_BITS:
        raise ValueError(f"GPTQ supports schemes {sorted(SCHEME_BITS)}, got {spec.name!r}")
    in_features, out_features, weight = linear_dims(linear)
    bias = getattr(linear, "bias", None)
    module = QuantizedLinear(in_features, out_features, bias=bias is not None, scheme=spec.name,
                             group_size=group_size if spec.uses_group_size else None,
                             symmetric=symmetric, device="meta")
    dev = weight.device
    H = H.to(dev)
    if spec.uses_group_size:
        res = gptq_quantize_weight(weight.float(), H, bits=4, group_size=module.group_size,
                                   symmetric=module.symmetric, act_order=act_order, percdamp=percdamp,
                                   clip_search=clip_search, name=name)
        if module.symmetric:
            tensors = {"weight_packed": ops.pack_int4((res["q"].to(torch.int16) + 8).to(torch.uint8)),
                       "weight_scale": res["scale"]}
        else:
            tensors = {"weight_packed": ops.pack_int4(res["q"]), "weight_scale": res["scale"],
                       "weight_zero": res["zero"]}
    else:
        res = gptq_quantize_weight(weight.float(), H, bits=8, group_size=None, symmetric=True,
                                   act_order=act_order, percdamp=percdamp, clip_search=clip_search, name=name)
        tensors = {"weight": res["q"], "weight_scale": res["scale"][:, 0].contiguous()}
    for key, t in tensors.items():
        setattr(module, key, t.contiguous().to(dev))
    if bias is not None:
        module.bias = bias.detach().clone()
    module.gptq_damp = res["damp"]
    return module


# ---- a whole model ---------------------------------------------------------------------------

def _input_groups(block: nn.Module, names: list, args_list) -> list:
    """Linears of `block` (names relative to it) grouped by shared input, in call order."""
    order, inputs = [], {}
    handles = []
    for n in names:
        def hook(mod, args, _n=n):
            if _n not in inputs:
                inputs[_n] = args[0]
                order.append(_n)
        handles.append(block.get_submodule(n).register_forward_pre_hook(hook))
    try:
        args, kwargs = args_list[0]
        block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    groups = []
    for n in order:
        for g in groups:
            if inputs[g[0]] is inputs[n] or (inputs[g[0]].shape == inputs[n].shape
                                              and torch.equal(inputs[g[0]], inputs[n])):
                g.append(n)
                break
        else:
            groups.append([n])
    return groups + [[n] for n in names if n not in inputs]  # never called: quantized with an empty H


class _Stop(Exception):
    pass


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, batches, scheme="w4a16", group_size: int = DEFAULT_GROUP_SIZE,
                        symmetric: bool = None, act_order: bool = False, percdamp: float = DEFAULT_PERCDAMP,
                        exclude=("lm_head",), batch_size: int = 1, true_sequential: bool = True,
                        progress: bool = True, fit_group: bool = True, clip_search: bool = True):
    """GPTQ-quantizes the model's linear layers in place, block by block; returns the model.

    batches: calibration token ids [n, T] (or a list of tensors / input dicts). scheme,
    group_size, symmetric, exclude: as in `quantize_model` (a per-layer dict works too).
    Layers outside the repeated blocks (other than excluded ones) get round-to-nearest.
    """
    plan, skipped = plan_quantization(model, scheme, exclude, group_size, symmetric, fit_group)
    for name, options in plan.items():
        if options["scheme"] not in SCHEME_BITS:
            raise ValueError(f"GPTQ supports schemes {sorted(SCHEME_BITS)}; layer {name} asks for "
                             f"{options['scheme']!r}")
    blocks_name, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], batches, batch_size)
    if not inputs:
        raise ValueError("no calibration batches reached the model's first block")
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(1 for n in plan if n.startswith(blocks_name + ".")), desc="myq: GPTQ",
                       unit="layer", leave=False)
        except ImportError:
            bar = None
    done = set()
    for b, block in enumerate(blocks):
        prefix = f"{blocks_name}.{b}."
        names = [n[len(prefix):] for n in plan if n.startswith(prefix)]
        groups = _input_groups(block, names, inputs) if true_sequential else [names]
        for group in groups:
            # one input group's Hessian at a time, from the block with earlier groups quantized
            first = block.get_submodule(group[0])
            acc = HessianAccumulator(linear_dims(first)[0], device=linear_dims(first)[2].device)

            def hook(mod, args):
                acc.add(args[0])
                if true_sequential:
                    raise _Stop

            accs = {}
            handles = []
            if true_sequential:
                handles.append(first.register_forward_pre_hook(hook))
            else:
                for n in group:
                    m = block.get_submodule(n)
                    accs[n] = HessianAccumulator(linear_dims(m)[0], device=linear_dims(m)[2].device)
                    handles.append(m.register_forward_pre_hook(lambda mod, a, _n=n: accs[_n].add(a[0])))
            try:
                for args, kwargs in inputs:
                    try:
                        block(*args, **kwargs)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
            for n in group:
                full = prefix + n
                options = plan[full]
                H = acc.H if true_sequential else accs[n].H
                q = quantized_linear_from_gptq(block.get_submodule(n), H, options["scheme"],
                                               options.get("group_size"), options.get("symmetric"),
                                               act_order, percdamp, clip_search, name=full)
                _set_submodule(block, n, q)
                done.add(full)
                if bar is not None:
                    bar.update(1)
            del acc, accs
        # the block's outputs (quantized) feed the next block
        new_inputs = []
        for args, kwargs in inputs:
            out = block_output(block(*args, **kwargs))
            new_inputs.append(with_hidden(args, kwargs, out))
        inputs = new_inputs
    if bar is not None:
        bar.close()
    for name, options in plan.items():
        if name in done:
            continue
        module = model.get_submodule(name)
        _set_submodule(model, name, QuantizedLinear.from_linear(
            module, scheme=options["scheme"], group_size=options.get("group_size"),
            symmetric=options.get("symmetric")))
    model._myq_skipped = dict(skipped)
    _attach_hf_config(model, scheme, exclude, group_size, symmetric)
    return model
