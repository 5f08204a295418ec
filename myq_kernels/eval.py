"""Evaluation: perplexity on fixed token windows, embedding similarity, decode / prefill speed."""
import math
import statistics
import time

import torch


def token_windows(tokenizer, text: str, window: int = 512, max_windows: int = None) -> torch.Tensor:
    """[n, window] token ids: the text tokenized once and cut into non-overlapping windows."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    def encode(t):
        return tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids[0]

    ids = None
    if max_windows is not None and len(text) > max_windows * window * 12:
        # Tokenizing megabytes takes seconds: a prefix long enough for the windows will do.
        ids = encode(text[: max_windows * window * 12])
        if ids.numel() < (max_windows + 1) * window:
            ids = None
    if ids is None:
        ids = encode(text)
    n = ids.numel() // window
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {window}")
    return ids[: n * window].reshape(n, window)


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> float:
    """exp(mean next-token negative log-likelihood) over every window of `windows` [n, T].

    Each window is scored on its own (no context carried over), so results are comparable
    between models as long as the windows are the same.
    """
    if windows.dim() != 2:
        raise ValueError(f"windows must be [n, T] token ids, got shape {list(windows.shape)}")
    device = next(model.parameters(), next(model.buffers(), torch.empty(0))).device
    total_nll, total_tokens = 0.0, 0
    chunks = list(torch.split(windows, batch_size))
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="perplexity", unit="batch", leave=False)
    for chunk in chunks:
        chunk = chunk.to(device)
        logits = model(input_ids=chunk).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += chunk[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


@torch.inference_mode()
def sliding_window_perplexity(model, input_ids: torch.Tensor, max_length: int = 512, stride: int = 256,
                              progress: bool = False) -> float:
    """Perplexity of one long token sequence with a sliding window (the Hugging Face recipe).

    Windows of `max_length` tokens start every `stride` tokens; each window scores only the
    tokens the previous one did not (its last `end - prev_end`), so every token after the first
    is predicted once, with up to `max_length - stride` tokens of context carried over.
    stride = max_length gives non-overlapping windows. input_ids: [T] or [1, T].
    """
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sequence [T] or [1, T], got shape {list(input_ids.shape)}")
    for name, value in (("max_length", max_length), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if stride > max_length:
        raise ValueError(f"stride ({stride}) must be <= max_length ({max_length}): tokens would go unscored")
    seq_len = ids.shape[1]
    if seq_len < 2:
        raise ValueError(f"need at least 2 tokens, got {seq_len}")
    device = next(model.parameters(), next(model.buffers(), torch.empty(0))).device
    starts = list(range(0, seq_len, stride))
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="perplexity", unit="window", leave=False)
    total_nll, total_tokens, prev_end = 0.0, 0, 0
    for begin in starts:
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end  # new tokens scored in this window
        chunk = ids[:, begin:end].to(device)
        logits = model(input_ids=chunk).logits.float()[0, :-1]
        targets = chunk[0, 1:]
        first = max(0, targets.shape[0] - trg_len)
        nll = torch.nn.functional.cross_entropy(logits[first:], targets[first:], reduction="sum")
        total_nll += nll.item()
        total_tokens += targets.shape[0] - first
        prev_end = end
        if end == seq_len:
            break
    return math.exp(total_nll / total_tokens)


@torch.inference_mode()
def sentence_embeddings(model, tokenizer, sentences, normalize: bool = True) -> torch.Tensor:
    """Mean-pooled (attention-masked) last hidden states, L2-normalised: sentence-transformers style."""
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def prefill_tokens_per_s(model, input_ids: torch.Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Tokens per second of one forward pass over `input_ids` [B, T] (median of `repeats`)."""
    for _ in range(warmup):
        model(input_ids=input_ids)
    t = _timed(lambda: model(input_ids=input_ids), repeats)
    return input_ids.numel() / t


@torch.inference_mode()
def decode_tokens_per_s(model, input_ids: torch.Tensor, new_tokens: int = 32, repeats: int = 2) -> float:
    """Greedy decode speed at the batch of `input_ids` (use [1, T] for batch 1), tokens/s.

    Times generate() for `new_tokens` and for 1 token and divides the difference, so the
    prompt's prefill is not counted.
    """
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2")

    def gen(n):
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False,
                              pad_token_id=getattr(model.config, "eos_token_id", None) or 0)

    gen(2)  # warm-up
    t_long = _timed(lambda: gen(new_tokens), repeats)
    t_one = _timed(lambda: gen(1), repeats)
    return (new_tokens - 1) * input_ids.shape[0] / max(t_long - t_one, 1e-9)
