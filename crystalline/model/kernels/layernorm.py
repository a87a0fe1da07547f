"""LayerNorm over channels (eps 1e-5). inp, out: (N, C); mean, rstd: (N,) saved for backward."""

import math

from numba import njit

from crystalline.config import FASTMATH

EPS = 1e-5


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def layernorm_forward(out, mean, rstd, inp, weight, bias, N, C):
    for n in range(N):
        x = inp[n]
        s = 0.0                                   # float64 accumulators
        for c in range(C):
            s += x[c]
        m = s / C
        s = 0.0
        for c in range(C):
            d = x[c] - m
            s += d * d
        r = 1.0 / math.sqrt(s / C + EPS)
        o = out[n]
        for c in range(C):
            o[c] = (x[c] - m) * r * weight[c] + bias[c]
        mean[n] = m
        rstd[n] = r


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulate into dinp, dweight, dbias (llm.c layernorm_backward)."""
    for n in range(N):
        x, g, dx = inp[n], dout[n], dinp[n]
        m, r = mean[n], rstd[n]
        dnorm_mean = 0.0
        dnorm_norm_mean = 0.0
        for c in range(C):
            norm = (x[c] - m) * r
            dnorm = weight[c] * g[c]
            dnorm_mean += dnorm
            dnorm_norm_mean += dnorm * norm
        dnorm_mean /= C
        dnorm_norm_mean /= C
        for c in range(C):
            norm = (x[c] - m) * r
            dnorm = weight[c] * g[c]
            dbias[c] += g[c]
            dweight[c] += norm * g[c]
            dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r
