"""AdamW (decoupled weight decay, PyTorch's formula) over the flat parameter vector, in place."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def adamw_step(params, grads, m, v, decay_mask, lr, beta1, beta2, eps, weight_decay, t,
               grad_scale=1.0):
    """One step t >= 1 on the gradient grad_scale * grads (scaled as it is read; grads is left
    as it is): m, v moments; p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * mask * p).

    Scalars are formed in float64 once, the loop runs in float32 (as PyTorch's does), so it
    vectorises 16 lanes wide: m_hat / (sqrt(v_hat) + eps) = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)."""
    b1, b2 = np.float32(beta1), np.float32(beta2)
    a1, a2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    step = np.float32(lr / (1.0 - beta1 ** t))
    inv_sqrt_bc2 = np.float32(1.0 / math.sqrt(1.0 - beta2 ** t))
    e = np.float32(eps)
    decay = np.float32(lr * weight_decay)
    for i in range(params.shape[0]):
        g = np.float32(grads[i] * grad_scale)       # as clip.scale_ rounds it
        mi = b1 * m[i] + a1 * g
        vi = b2 * v[i] + a2 * g * g
        m[i] = mi
        v[i] = vi
        p = params[i]
        params[i] = p - step * mi / (np.sqrt(vi) * inv_sqrt_bc2 + e) - decay * decay_mask[i] * p
