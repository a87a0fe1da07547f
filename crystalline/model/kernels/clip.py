"""Global gradient norm (float64 accumulation) and in-place scaling, for gradient clipping:
    norm = grad_norm(g); if norm > clip: scale_(g, clip / norm)"""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def grad_norm(grads):
    # four float64 partial sums in a fixed order: deterministic, and shorter dependency chains
    s0 = s1 = s2 = s3 = 0.0
    n = grads.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        a, b = np.float64(grads[i]), np.float64(grads[i + 1])
        c, d = np.float64(grads[i + 2]), np.float64(grads[i + 3])
        s0 += a * a
        s1 += b * b
        s2 += c * c
        s3 += d * d
    for i in range(n4, n):
        a = np.float64(grads[i])
        s0 += a * a
    return math.sqrt((s0 + s1) + (s2 + s3))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def scale_(grads, factor):
    for i in range(grads.shape[0]):
        grads[i] *= factor
