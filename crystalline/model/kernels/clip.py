"""Global gradient norm (float64 accumulation) and in-place scaling, for gradient clipping:
    norm = grad_norm(g); if norm > clip: scale_(g, clip / norm)"""

import math

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.simd import vdot


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def grad_norm(grads):
    """sqrt(sum(grads**2)) of a (P,) float32 array: float64 vector lanes in a fixed order
    (simd.vdot), so deterministic."""
    return math.sqrt(vdot(grads, 0, grads, 0, grads.shape[0]))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def scale_(grads, factor):
    for i in range(grads.shape[0]):
        grads[i] *= factor
