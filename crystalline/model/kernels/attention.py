"""Causal multi-head self-attention on the packed qkv (N, 3C) = [q | k | v], heads contiguous
hs = C // NH column slices. out: (N, C); att: (B, NH, T, T) softmax probabilities (0 above the
diagonal). q, k, v are read in place with row stride 3C.

Two ways, chosen by shape (`tiled`):
  * head size 16 or 32 and T a multiple of 16 (every preset): blocks of 4 queries on register
    tiles (tile.py) that stop at the causal diagonal (a little over half of the full T x T
    products). A sequence's keys (values, in the backward) are first transposed into `scratch`
    so that a tile reads 16 keys as one vector; the backward also regroups q, k and dy head by
    head there, so a tile's rows are contiguous instead of 3C (or C) floats apart, which here
    map to a handful of L1 sets and evict each other;
  * otherwise blocks of TILE queries, each block's products one BLAS GEMM over only the keys it
    may see (about 5/8 of the full T x T work at T = 128)."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.blas import N_, T_, gemm
from crystalline.model.kernels.rowsoftmax import softmax_backward_row, softmax_row
from crystalline.model.kernels.simd import LANES, exp32, vdot, vmax, vsum
from crystalline.model.kernels.tile import copy16, tile4x16, tile4x32, transpose16

TILE = 32  # query rows per block


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_forward(out, att, qkv, B, T, C, NH, scratch=None):
    """scratch: (>= 4 * C * T,) float32 work space, overwritten; None allocates one (the model
    passes its workspace's)."""
    if scratch is None:
        _forward(out, att, qkv, B, T, C, NH, np.empty(4 * C * T, np.float32))
    else:
        _forward(out, att, qkv, B, T, C, NH, scratch)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate=True, scratch=None):
    """Accumulate into dqkv (N, 3C); accumulate=False overwrites it (no zeroing pass needed).
    datt: (T, T) scratch; dout: (N, C); scratch as in attention_forward."""
    if scratch is None:
        _backward(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate,
                  np.empty(4 * C * T, np.float32))
    else:
        _backward(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate, scratch)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward(out, att, qkv, B, T, C, NH, scratch):
    if scratch.size < 4 * C * T:
        raise ValueError("attention scratch holds fewer than 4 * C * T floats")
    if tiled(T, C // NH):
        _forward_tiled(out, att, qkv, B, T, C, NH, scratch)
    else:
        _forward_blas(out, att, qkv, B, T, C, NH)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate, scratch):
    if scratch.size < 4 * C * T:
        raise ValueError("attention scratch holds fewer than 4 * C * T floats")
    if tiled(T, C // NH):
        _backward_tiled(dqkv, datt, dout, qkv, att, B, T, C, NH, scratch, accumulate)
    else:
        _backward_blas(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def tiled(T, hs):
    """Whether attention at this shape runs on product tiles (tile.py) instead of BLAS calls."""
    return (hs == 16 or hs == 32) and T % 16 == 0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _softmax_row(att, b, h, i, a_off, T):
    """att[b, h, i] = softmax(att[b, h, i, :i + 1]), 0 past the diagonal."""
    row = att[b, h, i]
    base = a_off + i * T
    m = vmax(att, base, i + 1)
    # whole 16-lane vectors (no scalar tail); entries past i are zeroed below
    for j in range(min(T, (i + LANES) // LANES * LANES)):
        row[j] = exp32(row[j] - m)
    inv = np.float32(1.0 / vsum(att, base, i + 1))
    for j in range(T):
        row[j] = row[j] * inv if j <= i else np.float32(0.0)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _transpose_block(dst, qkv, b, T, C, col, scale):
    """dst[c * T + j] = scale * qkv[b * T + j, col + c] for c < C: sequence b's (T, C) block of
    q, k or v as (C, T), in 16 x 16 register blocks (T and C multiples of 16)."""
    C3 = 3 * C
    for j0 in range(0, T, LANES):
        for c0 in range(0, C, LANES):
            transpose16(dst, c0 * T + j0, T, qkv, (b * T + j0) * C3 + col + c0, C3, scale)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _pack_heads(dst, src, row0, T, ld, col, C, hs):
    """dst[(h * T + j) * hs + d] = src.flat[(row0 + j) * ld + col + h * hs + d]: T rows of a
    (., C) block regrouped head by head, each head's (T, hs) contiguous."""
    for j in range(T):
        for h in range(C // hs):
            for d0 in range(0, hs, LANES):
                copy16(dst, (h * T + j) * hs + d0, src, (row0 + j) * ld + col + h * hs + d0)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _wide_tile(hs, c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate):
    """A 4 x hs tile (hs = 16 or 32)."""
    if hs == 16:
        tile4x16(c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate)
    else:
        tile4x32(c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_tiled(out, att, qkv, B, T, C, NH, scratch):
    hs = C // NH
    C3 = 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    kT = scratch[:C * T]
    for b in range(B):
        _transpose_block(kT, qkv, b, T, C, C, scale)
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            a_off = (b * NH + h) * T * T
            for i0 in range(0, T, 4):
                # scores[i0:i0+4, :j] = q[i0:i0+4] @ (scale k[:j]).T, whole 16-key tiles past i0+3
                for j0 in range(0, i0 + 4, LANES):
                    tile4x16(att, a_off + i0 * T + j0, T, qkv, q_off + i0 * C3, C3, 1,
                             kT, h * hs * T + j0, T, hs, False)
                for i in range(i0, i0 + 4):
                    softmax_row(att, a_off + i * T, i + 1, T)
                # y[i0:i0+4] = att[i0:i0+4, :i0+4] @ v[:i0+4]  (att is 0 past the diagonal)
                _wide_tile(hs, out, (b * T + i0) * C + h * hs, C, att, a_off + i0 * T, T, 1,
                           qkv, q_off + 2 * C, C3, i0 + 4, False)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_tiled(dqkv, datt, dout, qkv, att, B, T, C, NH, scratch, accumulate):
    hs = C // NH
    C3 = 3 * C
    CT = C * T
    scale = np.float32(1.0 / math.sqrt(hs))
    vT, qP, kP, dyP = scratch[:CT], scratch[CT:2 * CT], scratch[2 * CT:3 * CT], scratch[3 * CT:4 * CT]
    for b in range(B):
        _transpose_block(vT, qkv, b, T, C, 2 * C, np.float32(1.0))
        _pack_heads(qP, qkv, b * T, T, C3, 0, C, hs)
        _pack_heads(kP, qkv, b * T, T, C3, C, C, hs)
        _pack_heads(dyP, dout, b * T, T, C, 0, C, hs)
        for h in range(NH):
            q_off = b * T * C3 + h * hs
            k_off = q_off + C
            v_off = q_off + 2 * C
            a_off = (b * NH + h) * T * T
            p_off = h * T * hs
            for i0 in range(0, T, 4):
                # datt[i0:i0+4, :j] = dy[i0:i0+4] @ v[:j].T, whole 16-key tiles past i0+3
                for j0 in range(0, i0 + 4, LANES):
                    tile4x16(datt, i0 * T + j0, T, dyP, p_off + i0 * hs, hs, 1,
                             vT, h * hs * T + j0, T, hs, False)
                # dscores = att * (datt - sum_j att * datt) * scale, 0 past the diagonal up to
                # the block's last 16-key tile (all that the dq, dk tiles read)
                width = (i0 + 4 + LANES - 1) // LANES * LANES
                for i in range(i0, i0 + 4):
                    softmax_backward_row(att, a_off + i * T, datt, i * T, i + 1, width, scale)
                # dq[i0:i0+4] (+)= dscores[i0:i0+4, :i0+4] @ k[:i0+4]
                _wide_tile(hs, dqkv, q_off + i0 * C3, C3, datt, i0 * T, T, 1, kP, p_off, hs,
                           i0 + 4, accumulate)
            for j0 in range(0, T, 4):
                # dk[j0:j0+4] (+)= dscores[j0:, j0:j0+4].T @ q[j0:] ; dv likewise from att, dy
                _wide_tile(hs, dqkv, k_off + j0 * C3, C3, datt, j0 * T + j0, 1, T,
                           qP, p_off + j0 * hs, hs, T - j0, accumulate)
                _wide_tile(hs, dqkv, v_off + j0 * C3, C3, att, a_off + j0 * T + j0, 1, T,
                           dyP, p_off + j0 * hs, hs, T - j0, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_blas(out, att, qkv, B, T, C, NH):
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
                    _softmax_row(att, b, h, i, a_off, T)
                # y[r0:r1] = att[r0:r1, :r1] @ v[:r1]
                gemm(N_, N_, r1 - r0, hs, r1, 1.0, att, a_off + r0 * T, T, qkv, q_off + 2 * C, C3,
                     0.0, out, (b * T + r0) * C + h * hs, C)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_blas(dqkv, datt, dout, qkv, att, B, T, C, NH, accumulate):
    """The query blocks run last to first: the first one sees every key, so it writes all of
    dk, dv and later blocks add to them."""
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
