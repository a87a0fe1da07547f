"""Autoregressive sampling from a GPT, with or without a KV cache; the one place where sampling
arguments are checked (`check_sampling`: `GPT.generate`, `crystalline.sampling.sample_text`, the
CLI and the notebooks all come through here).

    out = generate(model, idx, 100, temperature=0.8, top_k=40, seed=0)     # (B, T0 + 100) int32
    out = generate(model, idx, 100, cache=False)                           # re-runs the context

The context is cropped to the last block_size tokens (nanoGPT's rule). With the cache (the
default), each new token runs the model on that token alone while the sequence fits in
block_size; once the context slides past it, the positions of every cached token change, so each
further token prefills the cropped window again (the cost of the uncached path). Both paths pick
tokens with one kernel from one stream of uniform draws, so for a given seed they give the same
tokens (up to float32 rounding of the logits deciding a draw that falls on a boundary).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from crystalline.config import MAX_SAMPLE_TOKENS
from crystalline.errors import ConfigError
from crystalline.model.kernels.sampling import sample_rows

MAX_NEW_TOKENS = MAX_SAMPLE_TOKENS     # a sane bound on one call (the output is B x (T0 + n) int32)


def check_sampling(vocab_size: int | None, max_new_tokens, temperature, top_k, seed,
                   names: dict | None = None) -> None:
    """ConfigError naming the argument and the fix, unless every sampling argument is valid.
    vocab_size None (a CLI check before the checkpoint is read) skips top_k's upper bound;
    names: how the caller spells each argument (e.g. {"top_k": "--top-k"} on the CLI)."""
    names = {"max_new_tokens": "tokens", "temperature": "temperature", "top_k": "top_k",
             "seed": "seed", **(names or {})}

    def bad(arg, value, fix):
        name = names[arg]
        given = f"{name} {value!r}" if name.startswith("--") else f"{name} = {value!r}"
        return ConfigError(f"{given} is invalid: {fix}")

    def integer(x):
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if not integer(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise bad("max_new_tokens", max_new_tokens, f"ask for 1 to {MAX_NEW_TOKENS:,} new tokens")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise bad("temperature", temperature, "use a positive finite temperature (e.g. 0.8; lower "
                  "is more conservative); for greedy decoding use top_k = 1")
    top = vocab_size if vocab_size is not None else math.inf
    if top_k is not None and (not integer(top_k) or not 1 <= top_k <= top):
        raise bad("top_k", top_k, f"use 1 to {vocab_size or 'the vocabulary size'} (1 is greedy) "
                  "or leave it unset")
    if not integer(seed) or not 0 <= seed < 2**63:
        raise bad("seed", seed, "use an integer from 0 to 2**63 - 1")


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None,
             seed: int = 0, cache: bool = True) -> np.ndarray:
    """(B, T0 + max_new_tokens) int32 tokens: idx (B, T0) or (T0,) followed by the samples."""
    cfg = model.config
    check_sampling(cfg.vocab_size, max_new_tokens, temperature, top_k, seed)
    idx = np.asarray(idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise ConfigError(f"generate needs a non-empty (B, T) integer prompt, got {idx.dtype} {idx.shape}")
    if int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size:
        raise ConfigError(f"the prompt holds token ids outside 0..{cfg.vocab_size - 1}; encode it "
                          "with the model's tokenizer")
    B, T0 = idx.shape
    V, block = cfg.vocab_size, cfg.block_size
    out = np.empty((B, T0 + max_new_tokens), np.int32)
    out[:, :T0] = idx
    rng = np.random.default_rng(seed)
    uniforms = np.empty(B, np.float64)
    probs, scratch = np.empty(V, np.float64), np.empty(V, np.float32)
    k = V if top_k is None else int(top_k)
    if cache:
        kv = KVCacheSampler(model, B, min(block, out.shape[1]))
    else:
        ws = model.workspace(B, min(block, out.shape[1]))
    for t in range(T0, out.shape[1]):
        if cache:
            logits = kv.next_logits(out, t)
        else:
            ctx = out[:, max(0, t - block):t]
            model.forward_into(ws, ctx)
            logits = ws.shaped(cfg, B, ctx.shape[1])["logits"].reshape(B, ctx.shape[1], V)[:, -1]
            logits = np.ascontiguousarray(logits)
        rng.random(out=uniforms)
        sample_rows(out[:, t], logits, probs, scratch, uniforms, float(temperature), k, B, V)
    return out


class KVCacheSampler:
    """The cached path's choice at each position: one step while the cache holds every earlier
    token of the window, else a prefill of the cropped window."""

    def __init__(self, model, B: int, max_len: int):
        from crystalline.model.kvcache import KVCache
        self.cache = KVCache(model, B, max_len)
        self.block = model.config.block_size

    def next_logits(self, out: np.ndarray, t: int) -> np.ndarray:
        """(B, V) logits of the token at position t given out[:, :t]."""
        if t <= self.block and self.cache.length == t - 1:
            return self.cache.step(out[:, t - 1])
        return self.cache.prefill(np.ascontiguousarray(out[:, max(0, t - self.block):t]))
