"""Causal multi-head self-attention on the packed qkv (N, 3C) = [q | k | v], heads contiguous
hs = C // NH column slices. out: (N, C); att: (B, NH, T, T) softmax probabilities (0 above the
diagonal). Per (b, head) the rows are taken in blocks of TILE queries; each block's scores,
outputs and gradients are BLAS GEMMs over only the keys it may see (about 5/8 of the full T x T
work at T = 128), reading q, k, v in place with row stride 3C."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.blas import N_, T_, gemm
from crystalline.model.kernels.simd import LANES, exp32, vdot, vmax, vsum

TILE = 32  # query rows per block


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_forward(out, att, qkv, B, T, C, NH):
    hs = C // NH
    C3 = 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    for b in range(B):
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            a_off = (b * NH + h) * T * T
            for r0 in range(0, T, TILE):
                r1 = min(r0 + TILE, T)
                # scores[r0:r1, :r1] = scale * q[r0:r1] @ k[:r1].T
                gemm(N_, T_, r1 - r0, r1, hs, scale, qkv, q_off + r0 * C3, C3, qkv, q_off + C, C3,
                     0.0, att, a_off + r0 * T, T)
                for i in range(r0, r1):
                    row = att[b, h, i]
                    base = a_off + i * T
                    m = vmax(att, base, i + 1)
                    # whole 16-lane vectors (no scalar tail); entries past i are zeroed below
                    for j in range(min(T, (i + LANES) // LANES * LANES)):
                        row[j] = exp32(row[j] - m)
                    inv = np.float32(1.0 / vsum(att, base, i + 1))
                    for j in range(T):
                        row[j] = row[j] * inv if j <= i else np.float32(0.0)
                # y[r0:r1] = att[r0:r1, :r1] @ v[:r1]
                gemm(N_, N_, r1 - r0, hs, r1, 1.0, att, a_off + r0 * T, T, qkv, q_off + 2 * C, C3,
                     0.0, out, (b * T + r0) * C + h * hs, C)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate=True):
    """Accumulate into dqkv (N, 3C); accumulate=False overwrites it (no zeroing pass needed).
    datt: (T, T) scratch. dout: (N, C). The query blocks run last to first: the first one sees
    every key, so it writes all of dk, dv and later blocks add to them."""
    hs = C // NH
    keep = np.float32(1.0 if accumulate else 0.0)
    last = (T - 1) // TILE * TILE
    C3 = 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    for b in range(B):
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            k_off = q_off + C
            v_off = q_off + 2 * C
            y_off = b * T * C + h * hs
            a_off = (b * NH + h) * T * T
            for r0 in range(last, -1, -TILE):
                r1 = min(r0 + TILE, T)
                rb = r1 - r0
                beta = keep if r0 == last else np.float32(1.0)   # for dk, dv (rows :r1)
                # datt[r0:r1, :r1] = dy[r0:r1] @ v[:r1].T ; dv[:r1] += att[r0:r1, :r1].T @ dy[r0:r1]
                gemm(N_, T_, rb, r1, hs, 1.0, dout, y_off + r0 * C, C, qkv, v_off, C3,
                     0.0, datt, r0 * T, T)
                gemm(T_, N_, r1, hs, rb, 1.0, att, a_off + r0 * T, T, dout, y_off + r0 * C, C,
                     beta, dqkv, v_off, C3)
                # softmax backward: dscores = att * (datt - sum_j att * datt) * scale
                for i in range(r0, r1):
                    p = att[b, h, i]
                    d = datt[i]
                    sd = np.float32(vdot(att, a_off + i * T, datt, i * T, i + 1))
                    # p is 0 past the diagonal, so this writes dscores 0 there (no scalar tail)
                    for j in range(r1):
                        d[j] = p[j] * (d[j] - sd) * scale
                # dq[r0:r1] += dscores[r0:r1, :r1] @ k[:r1] ; dk[:r1] += dscores[r0:r1, :r1].T @ q[r0:r1]
                gemm(N_, N_, rb, hs, r1, 1.0, datt, r0 * T, T, qkv, k_off, C3,
                     keep, dqkv, q_off + r0 * C3, C3)
                gemm(T_, N_, r1, hs, rb, 1.0, datt, r0 * T, T, qkv, q_off + r0 * C3, C3,
                     beta, dqkv, k_off, C3)
