"""AdamW (decoupled weight decay, PyTorch's formula) over the flat parameter vector, in place."""

import math

from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def adamw_step(params, grads, m, v, decay_mask, lr, beta1, beta2, eps, weight_decay, t):
    """One step t >= 1: m, v moments; p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * mask * p)."""
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    for i in range(params.shape[0]):
        g = grads[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        p = params[i]
        params[i] = p - lr * ((mi / bc1) / (math.sqrt(vi / bc2) + eps)
                              + weight_decay * decay_mask[i] * p)
