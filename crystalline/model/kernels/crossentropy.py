"""Fused softmax + cross-entropy. logits, probs, dlogits: (N, V); targets: (N,) ids; losses: (N,)."""

import math

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.softmax import exp_nonpos


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def crossentropy_forward(probs, losses, logits, targets, N, V):
    """probs = softmax(logits) row-wise; losses[n] = -log probs[n, targets[n]]; returns their sum
    (float64)."""
    total = 0.0
    for n in range(N):
        x, p = logits[n], probs[n]
        m = x[0]
        for v in range(1, V):
            m = max(m, x[v])
        for v in range(V):
            p[v] = exp_nonpos(x[v] - m)
        s = 0.0
        for v in range(V):
            s += p[v]
        inv = 1.0 / s
        for v in range(V):
            p[v] *= inv
        loss = math.log(s) - (x[targets[n]] - m)
        losses[n] = loss
        total += loss
    return total


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def crossentropy_backward(dlogits, probs, targets, dloss, N, V):
    """Accumulate the gradient of dloss * sum(losses): dlogits += dloss * (probs - onehot)."""
    for n in range(N):
        d, p = dlogits[n], probs[n]
        for v in range(V):
            d[v] += dloss * p[v]
        d[targets[n]] -= dloss
