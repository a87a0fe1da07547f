"""Causal multi-head self-attention without T x T matrices: FlashAttention-2 on CPU register tiles.

    attention_forward(out, lse, qkv, B, T, C, NH, scratch=None,
                      dropout=0.0, seed=0, step=0, seq0=0, layer=0)
    attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate=True, scratch=None,
                       dropout=0.0, seed=0, step=0, seq0=0, layer=0)
    scratch_floats(T, hs)       # floats of work space either call needs (linear in T)

qkv (N, 3C) = [q | k | v], heads contiguous hs = C // NH column slices; out (N, C); lse
(B, NH, T): each query row's log-sum-exp of its scaled scores, the only thing besides q, k, v and
out that the backward needs. Any T >= 1. Head sizes that are multiples of 16 (16, 32, 64, 128,
...) read q, k, v, dout and write out, dqkv in place (row strides 3C and C) on the 4 x 16 ...
4 x 64 register tiles of tile.py; other head sizes go through zero-padded copies whose heads are
hs rounded up to 16 wide (allocated per call: slower, for small test models).

Dropout on the attention probabilities (nanoGPT's dropout(softmax(s)) @ v): element (h, i, j) of
sequence b is kept iff dropout_rng.keep(stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION),
(h * T + i) * T + j, keep_threshold(dropout)), kept ones scaled by 1 / (1 - dropout); the
normalisation is the undropped softmax's. dropout = 0 skips every mask step.

Forward, for each sequence b and head h:
  pass 0: k transposed into scratch, scaled by 1 / sqrt(hs), so that a tile reads 16 keys as one
          vector (Tp = T rounded up to 16 columns, zeros past T);
  then for each block of 4 query rows i0..i0+3, over its keys 0..i0+3 in chunks of KC:
  pass 1: scores s = q @ kT for the chunk (4 x 64 and 4 x 16 tiles, up to 15 keys past the
          diagonal: the row pass masks them);
  pass 2: online softmax per row: m' = max(m, max s); s = e^(s - m'); l = l e^(m - m') + sum s;
          o *= e^(m - m') (dropout: then s *= mask / (1 - p));
  pass 3: o += s @ v (a 4 x hs tile);
  finally out = o / l and lse = m + log l.

Backward (FlashAttention-2), for each sequence, head and block of QB query rows:
  D_i = dout_i . out_i; for every 4 rows of the block, over keys 0..i:
    P = e^(q @ kT - lse) (recomputed), dPd = dout @ vT; with dropout Z = mask / (1 - p):
    dP = dPd Z, and the probabilities that multiplied v are P Z;
    dS = P (dP - D) / sqrt(hs)    (ds_row; D = sum_j P Z dPd, the same identity with dropout)
    dq = dS @ k                   (a 4 x hs tile over the rows' keys)
  then for the whole block, 4 keys at a time: dk += dS^T @ q, dv += (P Z)^T @ dout (tiles whose
  inner dimension is the block's QB rows; the first block that reaches a key writes it).
  P and dS of one block: 2 QB Tp floats of scratch.
"""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.dropout_rng import SITE_ATTENTION, keep, keep_threshold, stream_key
from crystalline.model.kernels.rowsoftmax import ds_row, exp_row, max_row
from crystalline.model.kernels.simd import LANES, exp32, vdot
from crystalline.model.kernels.tile import (copy16, tile4x16, tile4x32, tile4x48, tile4x64,
                                            transpose16)

ROWS = 4      # query rows per register tile
KC = 256      # keys per online-softmax chunk of the forward
QB = 64       # query rows per block of the backward (the inner dimension of the dk, dv tiles)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _ceil16(n):
    return (n + LANES - 1) // LANES * LANES


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def scratch_floats(T, hs):
    """Floats of scratch that attention_forward and attention_backward need at (T, hs): five
    packed (Tp, hsp) copies of one head's q, k, v or dout (two of them transposed), the
    backward's two QB x Tp blocks of P and dS, a row of D and a 4-row tile (Tp = T, hsp = hs,
    each rounded up to 16)."""
    Tp, hsp = _ceil16(T), _ceil16(hs)
    forward = 3 * Tp * hsp + ROWS * KC + ROWS * hsp + 2 * ROWS
    backward = 5 * Tp * hsp + 2 * QB * Tp + Tp + ROWS * hsp
    return max(forward, backward)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_forward(out, lse, qkv, B, T, C, NH, scratch=None, dropout=0.0, seed=0, step=0,
                      seq0=0, layer=0):
    """out (N, C) = causal attention of qkv (N, 3C); lse (B, NH, T) float32. scratch: at least
    scratch_floats(T, C // NH) float32, overwritten (None allocates one). Sequence b draws its
    dropout mask as sequence seq0 + b of the global batch."""
    if scratch is None:
        _forward_any(out.reshape(-1), lse.reshape(-1), qkv.reshape(-1), B, T, C, NH,
                     np.empty(scratch_floats(T, C // NH), np.float32), dropout, seed, step, seq0,
                     layer)
    else:
        _forward_any(out.reshape(-1), lse.reshape(-1), qkv.reshape(-1), B, T, C, NH,
                     scratch.reshape(-1), dropout, seed, step, seq0, layer)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate=True, scratch=None,
                       dropout=0.0, seed=0, step=0, seq0=0, layer=0):
    """dqkv (N, 3C) += gradient of sum(out * dout) (accumulate=False overwrites it, no zeroing
    pass needed); out and lse as the forward left them; scratch and dropout arguments as in
    attention_forward (the same values regenerate the same mask)."""
    if scratch is None:
        _backward_any(dqkv.reshape(-1), dout.reshape(-1), qkv.reshape(-1), out.reshape(-1),
                      lse.reshape(-1), B, T, C, NH, accumulate,
                      np.empty(scratch_floats(T, C // NH), np.float32), dropout, seed, step, seq0,
                      layer)
    else:
        _backward_any(dqkv.reshape(-1), dout.reshape(-1), qkv.reshape(-1), out.reshape(-1),
                      lse.reshape(-1), B, T, C, NH, accumulate, scratch.reshape(-1), dropout,
                      seed, step, seq0, layer)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _check(work, T, hs, dropout):
    if work.size < scratch_floats(T, hs):
        raise ValueError("attention scratch holds fewer than scratch_floats(T, hs) floats")
    if not 0.0 <= dropout < 1.0:
        raise ValueError("attention dropout must be in [0, 1)")


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _padded(x, N, parts, NH, hs, hsp):
    """x (N, parts * NH * hs) with every head widened to hsp columns, zeros past hs."""
    y = np.zeros(N * parts * NH * hsp, np.float32)
    for i in range(N):
        for c in range(parts * NH):
            for d in range(hs):
                y[(i * parts * NH + c) * hsp + d] = x[(i * parts * NH + c) * hs + d]
    return y


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _unpad(x, y, N, parts, NH, hs, hsp, accumulate):
    """x (N, parts * NH * hs) (+)= the first hs columns of every head of y."""
    for i in range(N):
        for c in range(parts * NH):
            for d in range(hs):
                v = y[(i * parts * NH + c) * hsp + d]
                j = (i * parts * NH + c) * hs + d
                x[j] = x[j] + v if accumulate else v


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_any(out, lse, qkv, B, T, C, NH, work, dropout, seed, step, seq0, layer):
    hs = C // NH
    _check(work, T, hs, dropout)
    if hs % LANES == 0:
        _forward(out, lse, qkv, B, T, C, NH, hs, work, dropout, seed, step, seq0, layer)
    else:
        N, hsp = B * T, _ceil16(hs)
        outp = np.empty(N * NH * hsp, np.float32)
        _forward(outp, lse, _padded(qkv, N, 3, NH, hs, hsp), B, T, NH * hsp, NH, hs, work,
                 dropout, seed, step, seq0, layer)
        _unpad(out, outp, N, 1, NH, hs, hsp, False)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_any(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate, work, dropout, seed, step,
                  seq0, layer):
    hs = C // NH
    _check(work, T, hs, dropout)
    if hs % LANES == 0:
        _backward(dqkv, dout, qkv, out, lse, B, T, C, NH, hs, accumulate, work, dropout, seed,
                  step, seq0, layer)
    else:
        N, hsp = B * T, _ceil16(hs)
        dqkvp = np.empty(N * 3 * NH * hsp, np.float32)
        _backward(dqkvp, _padded(dout, N, 1, NH, hs, hsp), _padded(qkv, N, 3, NH, hs, hsp),
                  _padded(out, N, 1, NH, hs, hsp), lse, B, T, NH * hsp, NH, hs, False, work,
                  dropout, seed, step, seq0, layer)
        _unpad(dqkv, dqkvp, N, 3, NH, hs, hsp, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _wide_tile(hs, c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate):
    """A 4 x hs tile (hs a multiple of 16) as 4 x 64 tiles and one narrower rest."""
    for c0 in range(0, hs, 64):
        w = min(64, hs - c0)
        if w == 64:
            tile4x64(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        elif w == 48:
            tile4x48(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        elif w == 32:
            tile4x32(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        else:
            tile4x16(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _scores(s, s_off, lds, a, a_off, lda, bT, b_off, ldb, K, width):
    """s[r, :width] = a[r, :K] @ bT[:K, :width] for the 4 rows of a at a_off (row stride lda),
    width a multiple of 16: 4 x 64 tiles, then 4 x 16 ones for the rest."""
    j0 = 0
    while j0 + 64 <= width:
        tile4x64(s, s_off + j0, lds, a, a_off, lda, 1, bT, b_off + j0, ldb, K, False)
        j0 += 64
    while j0 < width:
        tile4x16(s, s_off + j0, lds, a, a_off, lda, 1, bT, b_off + j0, ldb, K, False)
        j0 += LANES


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _transposed(dst, src, off, ld, T, Tp, hs, scale):
    """dst[d * Tp + j] = scale * src[off + j * ld + d] for d < hs, j < T; 0 for T <= j < Tp.
    Whole 16 x 16 blocks move through registers (transpose16), hs a multiple of 16."""
    full = T // LANES * LANES
    for j0 in range(0, full, LANES):
        for d0 in range(0, hs, LANES):
            transpose16(dst, d0 * Tp + j0, Tp, src, off + j0 * ld + d0, ld, scale)
    for d in range(hs):
        for j in range(full, Tp):
            dst[d * Tp + j] = scale * src[off + j * ld + d] if j < T else np.float32(0.0)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _packed(dst, src, off, ld, T, Tp, hs):
    """dst (Tp, hs) = the T rows of src at off (row stride ld), zeros below. Rows that lie 3C or
    C floats apart map to a few L1 sets and evict each other; packed, a tile's operand stays."""
    for j in range(T):
        for d0 in range(0, hs, LANES):
            copy16(dst, j * hs + d0, src, off + j * ld + d0)
    dst[T * hs:Tp * hs] = 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _store_rows(dst, off, ld, buf, n, hs, accumulate):
    """dst rows at off (stride ld) (+)= the first n rows of buf (4, hs)."""
    for r in range(n):
        for d in range(hs):
            v = buf[r * hs + d]
            dst[off + r * ld + d] = dst[off + r * ld + d] + v if accumulate else v


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward(out, lse, qkv, B, T, C, NH, hs_scale, work, dropout, seed, step, seq0, layer):
    """hs = C // NH a multiple of 16; scores scaled by 1 / sqrt(hs_scale)."""
    hs = C // NH
    Tp, C3 = _ceil16(T), 3 * C
    scale = np.float32(1.0 / math.sqrt(hs_scale))
    H = hs * Tp
    kT, q, v = work[:H], work[H:2 * H], work[2 * H:3 * H]   # (hs, Tp) keys, scaled; (Tp, hs)
    at = 3 * H
    s = work[at:at + ROWS * KC]                              # (4, KC) scores, then probabilities
    o = work[at + ROWS * KC:at + ROWS * KC + ROWS * hs]      # (4, hs) unnormalised output
    at += ROWS * KC + ROWS * hs
    ml = work[at:at + 2 * ROWS]                              # running max, then sum, per row
    threshold = keep_threshold(dropout)
    inv_keep = np.float32(1.0 / (1.0 - dropout))
    key = np.uint64(0)
    for b in range(B):
        if dropout > 0.0:
            key = stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION)
        for h in range(NH):
            col = h * hs
            _transposed(kT, qkv, b * T * C3 + C + col, C3, T, Tp, hs, scale)
            _packed(q, qkv, b * T * C3 + col, C3, T, Tp, hs)
            _packed(v, qkv, b * T * C3 + 2 * C + col, C3, T, Tp, hs)
            for i0 in range(0, T, ROWS):
                iend = min(i0 + ROWS, T)                 # the block sees keys 0 .. iend - 1
                for k0 in range(0, iend, KC):
                    k1 = min(k0 + KC, iend)
                    width = _ceil16(k1 - k0)
                    _scores(s, 0, KC, q, i0 * hs, hs, kT, k0, Tp, hs, width)
                    for r in range(ROWS):
                        i = i0 + r
                        n = min(i + 1, k1) - k0          # rows past T (padding) see every key
                        m_new = max_row(s, r * KC, n)
                        if k0 > 0:
                            m_new = max(m_new, ml[r])
                        total = exp_row(s, r * KC, n, width, m_new)
                        if k0 == 0:
                            ml[ROWS + r] = total
                        else:
                            alpha = exp32(ml[r] - m_new)
                            ml[ROWS + r] = ml[ROWS + r] * alpha + total
                            for d in range(hs):
                                o[r * hs + d] *= alpha
                        ml[r] = m_new
                        if dropout > 0.0 and i < T:
                            pos0 = (h * T + i) * T + k0
                            for j in range(n):
                                if keep(key, pos0 + j, threshold):
                                    s[r * KC + j] *= inv_keep
                                else:
                                    s[r * KC + j] = 0.0
                    _wide_tile(hs, o, 0, hs, s, 0, KC, 1, v, k0 * hs, hs, k1 - k0, k0 > 0)
                for r in range(iend - i0):
                    inv = np.float32(1.0) / ml[ROWS + r]
                    base = (b * T + i0 + r) * C + col
                    for d in range(hs):
                        out[base + d] = o[r * hs + d] * inv
                    lse[(b * NH + h) * T + i0 + r] = ml[r] + np.float32(math.log(ml[ROWS + r]))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward(dqkv, dout, qkv, out, lse, B, T, C, NH, hs_scale, accumulate, work, dropout, seed,
              step, seq0, layer):
    """hs = C // NH a multiple of 16; scores scaled by 1 / sqrt(hs_scale)."""
    hs = C // NH
    Tp, C3 = _ceil16(T), 3 * C
    scale = np.float32(1.0 / math.sqrt(hs_scale))
    H = hs * Tp
    kT, vT = work[:H], work[H:2 * H]                         # (hs, Tp) keys (scaled), values
    q, k, dy = work[2 * H:3 * H], work[3 * H:4 * H], work[4 * H:5 * H]   # (Tp, hs)
    at = 5 * H
    p = work[at:at + QB * Tp]                                # (QB, Tp) P, then P Z
    ds = work[at + QB * Tp:at + 2 * QB * Tp]                 # (QB, Tp) dPd, then dS
    at += 2 * QB * Tp
    D = work[at:at + Tp]
    at += Tp
    gt = work[at:at + ROWS * hs]                             # (4, hs) a tail tile's gradient
    threshold = keep_threshold(dropout)
    inv_keep = np.float32(1.0 / (1.0 - dropout))
    key = np.uint64(0)
    for b in range(B):
        if dropout > 0.0:
            key = stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION)
        for h in range(NH):
            col = h * hs
            q_at, k_at, v_at, y_at = b * T * C3 + col, b * T * C3 + C + col, b * T * C3 + 2 * C + col, b * T * C + col
            _transposed(kT, qkv, k_at, C3, T, Tp, hs, scale)
            _transposed(vT, qkv, v_at, C3, T, Tp, hs, np.float32(1.0))
            _packed(q, qkv, q_at, C3, T, Tp, hs)
            _packed(k, qkv, k_at, C3, T, Tp, hs)
            _packed(dy, dout, y_at, C, T, Tp, hs)
            for i in range(T):
                D[i] = vdot(dout, y_at + i * C, out, y_at + i * C, hs)
            for q0 in range(0, T, QB):
                q1 = min(q0 + QB, T)
                width = _ceil16(q1)                      # the block's rows see keys 0 .. q1 - 1
                for i0 in range(q0, q1, ROWS):
                    iend = min(i0 + ROWS, T)
                    r0 = (i0 - q0) * Tp
                    _scores(p, r0, Tp, q, i0 * hs, hs, kT, 0, Tp, hs, _ceil16(iend))
                    _scores(ds, r0, Tp, dy, i0 * hs, hs, vT, 0, Tp, hs, _ceil16(iend))
                    for r in range(ROWS):
                        i = i0 + r
                        n = i + 1 if i < T else 0        # padding rows: all zero
                        off = r0 + r * Tp
                        lse_i = lse[(b * NH + h) * T + i] if i < T else np.float32(0.0)
                        D_i = D[i] if i < T else np.float32(0.0)
                        exp_row(p, off, n, width, lse_i)
                        if dropout > 0.0 and n > 0:
                            pos0 = (h * T + i) * T
                            for j in range(n):
                                if keep(key, pos0 + j, threshold):
                                    ds[off + j] = p[off + j] * (ds[off + j] * inv_keep - D_i) * scale
                                    p[off + j] *= inv_keep
                                else:
                                    ds[off + j] = -p[off + j] * D_i * scale
                                    p[off + j] = 0.0
                            for j in range(n, width):
                                ds[off + j] = 0.0
                        else:
                            ds_row(p, off, ds, off, n, width, D_i, scale)
                    # dq[i0:iend] (+)= dS[i0:iend, :iend] @ k[:iend]
                    if iend - i0 == ROWS:
                        _wide_tile(hs, dqkv, q_at + i0 * C3, C3, ds, r0, Tp, 1, k, 0, hs, iend,
                                   accumulate)
                    else:
                        _wide_tile(hs, gt, 0, hs, ds, r0, Tp, 1, k, 0, hs, iend, False)
                        _store_rows(dqkv, q_at + i0 * C3, C3, gt, iend - i0, hs, accumulate)
                # dk[:q1] (+)= dS[q0:q1, :q1]^T @ q[q0:q1] ; dv[:q1] (+)= (P Z)[q0:q1, :q1]^T @ dy[q0:q1]
                for j0 in range(0, q1, ROWS):
                    add = accumulate or j0 < q0          # keys below q0: earlier blocks wrote them
                    if j0 + ROWS <= T:
                        _wide_tile(hs, dqkv, k_at + j0 * C3, C3, ds, j0, 1, Tp, q, q0 * hs, hs,
                                   q1 - q0, add)
                        _wide_tile(hs, dqkv, v_at + j0 * C3, C3, p, j0, 1, Tp, dy, q0 * hs, hs,
                                   q1 - q0, add)
                    else:
                        _wide_tile(hs, gt, 0, hs, ds, j0, 1, Tp, q, q0 * hs, hs, q1 - q0, False)
                        _store_rows(dqkv, k_at + j0 * C3, C3, gt, T - j0, hs, add)
                        _wide_tile(hs, gt, 0, hs, p, j0, 1, Tp, dy, q0 * hs, hs, q1 - q0, False)
                        _store_rows(dqkv, v_at + j0 * C3, C3, gt, T - j0, hs, add)
