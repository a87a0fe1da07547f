"""Slow, obvious float64 NumPy references for every kernel and for the whole GPT (stumpy's naive.py).

Shapes follow the kernels: x (N, C) rows, weight (OC, C), qkv (B, T, 3C), logits (N, V).
"""

import math

import numpy as np


def encoder(idx, wte, wpe):
    B, T = idx.shape
    return (wte[idx] + wpe[None, :T]).reshape(B * T, -1)


def layernorm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def matmul(x, w, b=None):
    out = x @ w.T
    return out if b is None else out + b


def attention(qkv, NH, drop=lambda p: p):
    """qkv (B, T, 3C) -> y (B, T, C), causal; drop: dropout of the (B, NH, T, T) probabilities."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (drop(p) @ v).transpose(0, 2, 1, 3).reshape(B, T, C), p


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def residual(a, b):
    return a + b


def crossentropy(logits, targets):
    """Per-row losses of softmax cross-entropy; also the probabilities."""
    m = logits.max(-1, keepdims=True)
    p = np.exp(logits - m)
    p /= p.sum(-1, keepdims=True)
    return -np.log(p[np.arange(len(targets)), targets]), p


def adamw(p, g, m, v, mask, lr, beta1, beta2, eps, wd, t):
    """PyTorch's AdamW step; returns new (p, m, v)."""
    p = p * (1 - lr * wd * mask)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps
    return p - lr / (1 - beta1 ** t) * m / denom, m, v


def gpt_loss(p, cfg, idx, targets, drop=None):
    """Mean next-token loss of the GPT; p: dict of float64 parameter tensors. drop: None, or
    drop(x, layer, site) -> x through that dropout site's mask (nanoGPT's four sites: "embedding"
    (B*T, C), "attention" (B, NH, T, T), "attn_out" and "mlp_out" (B*T, C))."""
    drop = drop or (lambda x, layer, site: x)
    B, T = idx.shape
    x = drop(encoder(idx, p["wte"], p["wpe"]), 0, "embedding")
    for l in range(cfg.n_layer):
        h = layernorm(x, p["ln1w"][l], p["ln1b"][l])
        qkv = matmul(h, p["qkvw"][l], p["qkvb"][l]).reshape(B, T, -1)
        y, _ = attention(qkv, cfg.n_head, lambda att, l=l: drop(att, l, "attention"))
        x = x + drop(matmul(y.reshape(B * T, -1), p["attprojw"][l], p["attprojb"][l]), l, "attn_out")
        h = layernorm(x, p["ln2w"][l], p["ln2b"][l])
        x = x + drop(matmul(gelu(matmul(h, p["fcw"][l], p["fcb"][l])), p["fcprojw"][l], p["fcprojb"][l]),
                     l, "mlp_out")
    logits = matmul(layernorm(x, p["lnfw"], p["lnfb"]), p["wte"])
    losses, _ = crossentropy(logits, targets.reshape(-1))
    return losses.mean(), logits.reshape(B, T, -1)


def warmup_cosine(step, peak, floor, warmup, total):
    """llm.c's learning-rate schedule: step s < warmup gets peak * (s + 1) / warmup, then half a
    cosine from peak down to `floor` at step `total`; from `total` on, `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return floor
    angle = math.pi * (step - warmup) / (total - warmup)
    return floor + (peak - floor) * (math.cos(angle) + 1) / 2


def assert_gradients_match_differences(grads, p64, loss, entries, seed=7, h=1e-5):
    """Every gradient tensor in `grads` (name -> array) against central differences of the float64
    `loss()` at `entries` random entries of the same tensor in p64 (name -> float64 array, moved
    and restored in place): |g - fd| <= 1e-3 (max |g| of the tensor + |fd|), and no tensor all 0."""
    rng = np.random.default_rng(seed)
    for name, g in grads.items():
        scale = np.abs(g).max()
        assert scale > 0, name
        flat_p, flat_g = p64[name].reshape(-1), g.reshape(-1)
        for i in rng.choice(flat_g.size, size=min(entries, flat_g.size), replace=False):
            old = flat_p[i]
            flat_p[i] = old + h
            lp = loss()
            flat_p[i] = old - h
            lm = loss()
            flat_p[i] = old
            fd = (lp - lm) / (2 * h)
            assert abs(flat_g[i] - fd) <= 1e-3 * scale + 1e-3 * abs(fd), (name, i, flat_g[i], fd)
