"""The single-token step of cached generation: embed one new token per sequence, and attend from
it over the keys and values cached for the positions before it (plus its own).

    embed_token(out, tokens, wte, wpe, pos, B, C)                 # out (B, C)
    attention_decode(out, k_cache, v_cache, qkv, scores, pos, B, C, NH)

k_cache, v_cache: (B, Tmax, C) one layer's keys and values, heads in hs = C // NH column slices
as in qkv; qkv: (B, 3C) the new token's [q | k | v]. Every other op of the step (LayerNorm,
projections, GELU, residuals) is the training kernels' with N = B rows.
"""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def embed_token(out, tokens, wte, wpe, pos, B, C):
    """out[b] = wte[tokens[b]] + wpe[pos]."""
    for b in range(B):
        ix = tokens[b]
        for c in range(C):
            out[b, c] = wte[ix, c] + wpe[pos, c]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_decode(out, k_cache, v_cache, qkv, scores, pos, B, C, NH):
    """Store the new token's k, v at position `pos`, then out[b] = causal attention of its q over
    positions 0..pos. scores: (>= pos + 1,) float32 scratch.

    Per sequence and head: pass 1, scores[t] = q . k[t] / sqrt(hs) and their max; pass 2,
    exponentials and their sum; pass 3, out = sum_t scores[t] v[t] / sum."""
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    for b in range(B):
        for c in range(C):
            k_cache[b, pos, c] = qkv[b, C + c]
            v_cache[b, pos, c] = qkv[b, 2 * C + c]
        for h in range(NH):
            lo = h * hs
            best = np.float32(-np.inf)
            for t in range(pos + 1):
                s = np.float32(0.0)
                for i in range(hs):
                    s += qkv[b, lo + i] * k_cache[b, t, lo + i]
                s *= scale
                scores[t] = s
                best = max(best, s)
            total = np.float32(0.0)
            for t in range(pos + 1):
                e = np.float32(math.exp(scores[t] - best))
                scores[t] = e
                total += e
            inv = np.float32(1.0) / total
            for i in range(hs):
                out[b, lo + i] = 0.0
            for t in range(pos + 1):
                w = scores[t] * inv
                for i in range(hs):
                    out[b, lo + i] += w * v_cache[b, t, lo + i]
