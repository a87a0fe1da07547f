"""AdamW (decoupled weight decay, PyTorch's formula) over the flat parameter vector, in place."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.bf16 import round_bf16


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def step_constants(lr, beta1, beta2, eps, weight_decay, t):
    """The float32 constants of step t, formed in float64 once so that the loop runs in float32:
    (b1, b2, 1 - b1, 1 - b2, lr / (1 - b1**t), 1 / sqrt(1 - b2**t), eps, lr * weight_decay).
    Node Zero's bounds (engine/optimizer.py) read the same values."""
    return (np.float32(beta1), np.float32(beta2), np.float32(1.0 - beta1), np.float32(1.0 - beta2),
            np.float32(lr / (1.0 - beta1 ** t)), np.float32(1.0 / math.sqrt(1.0 - beta2 ** t)),
            np.float32(eps), np.float32(lr * weight_decay))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _element(p, g, mi, vi, mask, b1, b2, a1, a2, step, inv_sqrt_bc2, e, decay):
    """(m, v, p) of one parameter after the step."""
    mi = b1 * mi + a1 * g
    vi = b2 * vi + a2 * g * g
    return mi, vi, p - step * mi / (np.sqrt(vi) * inv_sqrt_bc2 + e) - decay * mask * p


BLOCK = 4096    # elements updated before their bf16 copy is written, while still in cache


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def adamw_step(params, grads, m, v, decay_mask, lr, beta1, beta2, eps, weight_decay, t,
               grad_scale=1.0, bf16=None):
    """One step t >= 1 on the gradient grad_scale * grads (scaled as it is read; grads is left
    as it is): m, v moments; p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * mask * p).
    bf16: None, or a (P,) uint16 array that receives the bf16 bits of the new parameters
    (round to nearest even, as bf16.round_bf16), block by block in the same pass.

    Scalars are formed in float64 once, the loop runs in float32 (as PyTorch's does), so it
    vectorises: m_hat / (sqrt(v_hat) + eps) = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)."""
    constants = step_constants(lr, beta1, beta2, eps, weight_decay, t)
    if bf16 is None:
        _update(params, grads, m, v, decay_mask, grad_scale, constants)
        return
    n = params.shape[0]
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        _update(params[start:stop], grads[start:stop], m[start:stop], v[start:stop],
                decay_mask[start:stop], grad_scale, constants)
        round_bf16(bf16[start:stop], params[start:stop], stop - start)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _update(params, grads, m, v, decay_mask, grad_scale, constants):
    """adamw_step's loop over whole arrays (a function of its own, so that LLVM vectorises it)."""
    b1, b2, a1, a2, step, inv_sqrt_bc2, e, decay = constants
    for i in range(params.shape[0]):
        g = np.float32(grads[i] * grad_scale)       # as clip.scale_ rounds it
        m[i], v[i], params[i] = _element(params[i], g, m[i], v[i], decay_mask[i],
                                         b1, b2, a1, a2, step, inv_sqrt_bc2, e, decay)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def adamw_step_is_finite(params, grads, m, v, decay_mask, lr, beta1, beta2, eps, weight_decay, t,
                         grad_scale=1.0):
    """Whether adamw_step with the same arguments would leave every parameter and moment finite.

    Computes the step exactly as adamw_step does and writes nothing."""
    b1, b2, a1, a2, step, inv_sqrt_bc2, e, decay = step_constants(lr, beta1, beta2, eps,
                                                                  weight_decay, t)
    bad = False
    for i in range(params.shape[0]):
        g = np.float32(grads[i] * grad_scale)
        mi, vi, p = _element(params[i], g, m[i], v[i], decay_mask[i],
                             b1, b2, a1, a2, step, inv_sqrt_bc2, e, decay)
        bad |= not (np.isfinite(p) & np.isfinite(mi) & np.isfinite(vi))
    return not bad
