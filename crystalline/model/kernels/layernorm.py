"""LayerNorm over channels (eps 1e-5). inp, out: (N, C); mean, rstd: (N,) saved for backward."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.simd import vdot, vdot3, vsum

EPS = 1e-5


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def layernorm_forward(out, mean, rstd, inp, weight, bias, N, C):
    for n in range(N):
        x, o = inp[n], out[n]
        m = vsum(inp, n * C, C) / C                # float64 sums, vectorised (simd.py)
        mf = np.float32(m)
        for c in range(C):
            o[c] = x[c] - mf
        r = np.float32(1.0 / math.sqrt(vdot(out, n * C, out, n * C, C) / C + EPS))
        for c in range(C):
            o[c] = o[c] * r * weight[c] + bias[c]
        mean[n] = mf
        rstd[n] = r


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulate into dinp, dweight, dbias (llm.c layernorm_backward)."""
    for n in range(N):
        x, g, dx = inp[n], dout[n], dinp[n]
        m, r = mean[n], rstd[n]
        # sum(w g) and sum(w g norm) = r (sum(w g x) - m sum(w g)), float64
        s_wg = vdot(weight, 0, dout, n * C, C)
        dnorm_mean = np.float32(s_wg / C)
        dnorm_norm_mean = np.float32(r * (vdot3(weight, 0, dout, n * C, inp, n * C, C) - m * s_wg) / C)
        for c in range(C):
            norm = (x[c] - m) * r
            dbias[c] += g[c]
            dweight[c] += norm * g[c]
            dx[c] += (weight[c] * g[c] - dnorm_mean - norm * dnorm_norm_mean) * r
