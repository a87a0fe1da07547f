"""Pick the next token of each sequence from its logits: temperature, top-k, inverse CDF.

    sample_rows(tokens, logits, probs, scratch, uniforms, temperature, top_k, B, V)

logits: (B, V) float32; tokens: (B,) int32 out; probs: (V,) float64 and scratch: (V,) float32
work space; uniforms: (B,) float64 in [0, 1), one draw per sequence. Both generation paths
(cached and uncached) pick through this kernel, so equal logits and draws give equal tokens.
"""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def kth_largest(scratch, n, k):
    """The k-th largest of scratch[:n] (k >= 1); reorders scratch (quickselect, middle pivot)."""
    want = n - k               # its index in ascending order
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = scratch[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while scratch[i] < pivot:
                i += 1
            while scratch[j] > pivot:
                j -= 1
            if i <= j:
                scratch[i], scratch[j] = scratch[j], scratch[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    return scratch[want]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def sample_rows(tokens, logits, probs, scratch, uniforms, temperature, top_k, B, V):
    """tokens[b] ~ softmax(logits[b] / temperature) over the top_k largest logits (ties at the
    k-th value are kept; top_k >= V keeps all): the first token whose cumulative probability
    exceeds uniforms[b]."""
    for b in range(B):
        best = logits[b, 0]
        for v in range(1, V):
            best = max(best, logits[b, v])
        floor = -np.inf
        if top_k < V:
            for v in range(V):
                scratch[v] = logits[b, v]
            floor = kth_largest(scratch, V, top_k)
        total = 0.0
        for v in range(V):
            x = logits[b, v]
            p = math.exp((float(x) - float(best)) / temperature) if x >= floor else 0.0
            probs[v] = p
            total += p
        target = uniforms[b] * total
        acc, chosen = 0.0, -1
        for v in range(V):
            if probs[v] > 0.0:
                chosen = v          # the last kept token, should rounding leave target unreached
                acc += probs[v]
                if acc > target:
                    break
        tokens[b] = chosen
