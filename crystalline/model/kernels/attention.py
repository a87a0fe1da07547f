"""Causal multi-head self-attention on the packed qkv (N, 3C) = [q | k | v], heads contiguous
hs = C // NH column slices. out: (N, C); att: (B, NH, T, T) softmax probabilities (0 above the
diagonal). Scores and products are per-(b, head) BLAS GEMMs read in place with row stride 3C."""

import math

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.blas import N_, T_, gemm


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_forward(out, att, qkv, B, T, C, NH):
    hs = C // NH
    C3 = 3 * C
    scale = 1.0 / math.sqrt(hs)
    for b in range(B):
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            a_off = (b * NH + h) * T * T
            # scores (T, T) = scale * q @ k.T  (upper triangle computed, then masked)
            gemm(N_, T_, T, T, hs, scale, qkv, q_off, C3, qkv, q_off + C, C3, 0.0, att, a_off, T)
            for i in range(T):
                row = att[b, h, i]
                m = row[0]
                for j in range(1, i + 1):
                    if row[j] > m:
                        m = row[j]
                s = 0.0
                for j in range(i + 1):
                    e = math.exp(row[j] - m)
                    row[j] = e
                    s += e
                inv = 1.0 / s
                for j in range(i + 1):
                    row[j] *= inv
                for j in range(i + 1, T):
                    row[j] = 0.0
            # y (T, hs) = att @ v
            gemm(N_, N_, T, hs, T, 1.0, att, a_off, T, qkv, q_off + 2 * C, C3, 0.0,
                 out, b * T * C + h * hs, C)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH):
    """Accumulate into dqkv (N, 3C). datt: (T, T) scratch. dout: (N, C)."""
    hs = C // NH
    C3 = 3 * C
    scale = 1.0 / math.sqrt(hs)
    for b in range(B):
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            k_off = q_off + C
            v_off = q_off + 2 * C
            y_off = b * T * C + h * hs
            a_off = (b * NH + h) * T * T
            # datt = dy @ v.T ; dv += att.T @ dy
            gemm(N_, T_, T, T, hs, 1.0, dout, y_off, C, qkv, v_off, C3, 0.0, datt, 0, T)
            gemm(T_, N_, T, hs, T, 1.0, att, a_off, T, dout, y_off, C, 1.0, dqkv, v_off, C3)
            # softmax backward: dscores = att * (datt - sum_j att * datt) * scale
            for i in range(T):
                p = att[b, h, i]
                d = datt[i]
                s = 0.0
                for j in range(i + 1):
                    s += p[j] * d[j]
                for j in range(i + 1):
                    d[j] = p[j] * (d[j] - s) * scale
                for j in range(i + 1, T):
                    d[j] = 0.0
            # dq += dscores @ k ; dk += dscores.T @ q
            gemm(N_, N_, T, hs, T, 1.0, datt, 0, T, qkv, k_off, C3, 1.0, dqkv, q_off, C3)
            gemm(T_, N_, T, hs, T, 1.0, datt, 0, T, qkv, q_off, C3, 1.0, dqkv, k_off, C3)
