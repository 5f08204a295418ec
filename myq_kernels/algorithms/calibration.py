"""Calibration data and activation statistics for the accuracy algorithms.

- `calibration_batches(tokenizer, text, n_samples, seq_len)`: [n, seq_len] token ids cut
  from a text (random windows, seeded), the usual GPTQ / SmoothQuant calibration set.
- `collect_activation_stats(model, batches)`: per input channel min / max / absmax of every
  linear layer's input over the calibration set ({layer name: ActStats}).
- `iter_batches` / `run_model`: run a model over batches given as token-id tensors [n, T],
  a list of such tensors, or a list of keyword dicts (`{"input_ids": ..., "attention_mask": ...}`).
- `find_blocks(model)`: the model's repeated blocks (Llama `model.layers`, BERT `encoder.layer`,
  GPT-2 `transformer.h`), used by GPTQ to go block by block.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import QuantizedLinear, is_conv1d


def calibration_batches(tokenizer, text: str, n_samples: int = 32, seq_len: int = 256, seed: int = 0):
    """[n_samples, seq_len] token ids: random windows of the tokenized `text` (seeded)."""
    for name, value, low in (("n_samples", n_samples, 1), ("seq_len", seq_len, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() < seq_len + 1:
        raise ValueError(f"the calibration text has {ids.numel()} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def iter_batches(batches, batch_size: int = 1):
    """Keyword-argument dicts for model(**kw) from a [n, T] id tensor, a list of tensors or of dicts."""
    if isinstance(batches, torch.Tensor):
        if batches.dim() == 1:
            batches = batches.unsqueeze(0)
        if batches.dtype.is_floating_point:
            raise TypeError("calibration batches must be token ids (an integer tensor) or dicts of inputs")
        for chunk in torch.split(batches, batch_size):
            yield {"input_ids": chunk}
        return
    if isinstance(batches, dict):
        yield dict(batches)
        return
    for item in batches:
        if isinstance(item, torch.Tensor):
            yield {"input_ids": item if item.dim() == 2 else item.unsqueeze(0)}
        elif isinstance(item, dict):
            yield dict(item)
        else:
            raise TypeError(f"a calibration batch must be a tensor of token ids or a dict, got {type(item).__name__}")


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _call_model(model, kwargs):
    device = model_device(model)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if hasattr(model, "config") and "use_cache" not in kwargs and getattr(model.config, "use_cache", None) is not None:
        kwargs["use_cache"] = False
    return model(**kwargs)


@torch.no_grad()
def run_model(model, batches, batch_size: int = 1, progress: bool = False):
    """Runs the model over every batch (outputs discarded); hooks see the activations."""
    items = list(iter_batches(batches, batch_size))
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="calibration", unit="batch", leave=False)
    for kwargs in items:
        _call_model(model, kwargs)


def is_linear(module) -> bool:
    return (isinstance(module, nn.Linear) or is_conv1d(module)) and not isinstance(module, QuantizedLinear)


@dataclass
class ActStats:
    """Per input channel statistics of a layer's input over the calibration tokens."""
    min: torch.Tensor
    max: torch.Tensor
    absmax: torch.Tensor
    tokens: int = 0

    def update(self, x: torch.Tensor):
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        if flat.shape[0] == 0:
            return
        self.min = torch.minimum(self.min, flat.amin(0))
        self.max = torch.maximum(self.max, flat.amax(0))
        self.absmax = torch.maximum(self.absmax, flat.abs().amax(0))
        self.tokens += flat.shape[0]

    @classmethod
    def empty(cls, k: int, device=None):
        inf = torch.full((k,), float("inf"), device=device)
        return cls(inf.clone(), -inf, torch.zeros(k, device=device), 0)

    def shifted(self, z: torch.Tensor) -> "ActStats":
        """Statistics of x - z."""
        lo, hi = self.min - z, self.max - z
        return ActStats(lo, hi, torch.maximum(lo.abs(), hi.abs()), self.tokens)

    def scaled(self, inv_s: torch.Tensor) -> "ActStats":
        """Statistics of x * inv_s (inv_s > 0)."""
        return ActStats(self.min * inv_s, self.max * inv_s, self.absmax * inv_s, self.tokens)


@torch.no_grad()
def collect_activation_stats(model: nn.Module, batches, names=None, batch_size: int = 1,
                             progress: bool = False) -> dict:
    """{linear layer name: ActStats of its input} over the calibration batches.

    names: restrict to these layer names (default: every nn.Linear / Conv1D).
    """
    stats, handles = {}, []
    for name, module in model.named_modules():
        if not is_linear(module) or (names is not None and name not in names):
            continue

        def hook(mod, args, _name=name):
            x = args[0]
            if _name not in stats:
                stats[_name] = ActStats.empty(x.shape[-1], x.device)
            stats[_name].update(x)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_model(model, batches, batch_size, progress)
    finally:
        for h in handles:
            h.remove()
    return stats


def find_blocks(model: nn.Module):
    """(name, ModuleList) of the model's repeated blocks: the longest ModuleList whose entries
    hold linear layers (Llama model.layers, BERT encoder.layer, GPT-2 transformer.h)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(any(is_linear(m) or isinstance(m, QuantizedLinear) for m in block.modules())
                   for block in module):
                if best is None or len(module) > len(best[1]):
                    best = (name, module)
    if best is None:
        raise ValueError(f"cannot find the repeated blocks (a ModuleList of layers) of {type(model).__name__}")
    return best


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, batches, batch_size: int = 1):
    """[(args, kwargs)] the model passes to `block` for each calibration batch (the model's
    forward is stopped there, so later layers do not run)."""
    captured = []

    def hook(mod, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for kwargs in iter_batches(batches, batch_size):
            try:
                _call_model(model, kwargs)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def block_hidden(args, kwargs):
    """The hidden states passed to a block (first positional argument or `hidden_states`)."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, dict(kwargs, hidden_states=hidden)


def block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out
