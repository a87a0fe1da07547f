"""Dropout of activation rows: out = inp * mask / (1 - p) over B sequences of TC = T * C floats,
the mask of sequence seq0 + b drawn from dropout_rng at positions t * C + c (see there).

The backward is the same product (d inp = d out * mask / (1 - p)), so one kernel serves both and
the backward regenerates the masks instead of storing them. out may be inp (in place)."""

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.dropout_rng import keep, keep_threshold, stream_key


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def dropout_forward(out, inp, seed, step, seq0, layer, site, B, TC, p):
    threshold = keep_threshold(p)
    scale = np.float32(1.0 / (1.0 - p))
    zero = np.float32(0.0)
    for b in range(B):
        key = stream_key(seed, step, seq0 + b, layer, site)
        row = b * TC
        for i in range(TC):
            # a product with 0, not a plain 0: a NaN or inf in inp still shows (as in PyTorch)
            out[row + i] = inp[row + i] * (scale if keep(key, i, threshold) else zero)
