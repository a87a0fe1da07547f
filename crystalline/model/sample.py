"""Autoregressive sampling from a GPT (no KV cache: each token re-runs the cropped context)."""

from __future__ import annotations

import numpy as np

from crystalline.errors import ConfigError


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None,
             seed: int = 0) -> np.ndarray:
    """(B, T0 + max_new_tokens) int32 tokens; deterministic for a given seed."""
    idx = np.asarray(idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise ConfigError(f"generate needs a non-empty (B, T) integer prompt, got {idx.dtype} {idx.shape}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens = {max_new_tokens} must be 0 or more")
    if not temperature > 0:
        raise ConfigError(f"temperature = {temperature} must be positive")
    V = model.config.vocab_size
    if top_k is not None and not 1 <= int(top_k):
        raise ConfigError(f"top_k = {top_k} must be None or a positive integer")
    rng = np.random.default_rng(seed)
    B = idx.shape[0]
    out = np.empty((B, idx.shape[1] + max_new_tokens), np.int32)
    out[:, :idx.shape[1]] = idx
    ws = model.workspace(B)
    for t in range(idx.shape[1], out.shape[1]):
        ctx = out[:, max(0, t - model.config.block_size):t]
        model.forward_into(ws, np.ascontiguousarray(ctx))
        T = ctx.shape[1]
        logits = ws.shaped(model.config, B, T)["logits"].reshape(B, T, V)[:, -1, :]
        logits = logits.astype(np.float64) / temperature
        if top_k is not None and int(top_k) < V:
            kth = np.partition(logits, -int(top_k), axis=-1)[:, -int(top_k)][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        for b in range(B):
            out[b, t] = rng.choice(V, p=probs[b])
    return out
