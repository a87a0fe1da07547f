"""Causal multi-head self-attention without T x T matrices: FlashAttention-2 on CPU register tiles.

    attention_forward(out, lse, qkv, B, T, C, NH, scratch=None,
                      dropout=0.0, seed=0, step=0, seq0=0, layer=0)
    attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate=True, scratch=None,
                       dropout=0.0, seed=0, step=0, seq0=0, layer=0)
    scratch_floats(T, hs)       # floats of work space either call needs (linear in T)

qkv (N, 3C) = [q | k | v], heads contiguous hs = C // NH column slices, read in place with row
stride 3C; out (N, C); lse (B, NH, T): each query row's log-sum-exp of its scaled scores, the only
thing besides q, k, v and out that the backward needs. Any T >= 1 and any head size: a head is
packed into hsp = hs rounded up to 16 columns (zeros past hs change no product), so every product
runs on the 4 x 16 ... 4 x 64 register tiles of tile.py.

Dropout on the attention probabilities (nanoGPT's dropout(softmax(s)) @ v): element (h, i, j) of
sequence b is kept iff dropout_rng.keep(stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION),
(h * T + i) * T + j, keep_threshold(dropout)), kept ones scaled by 1 / (1 - dropout); the
normalisation is the undropped softmax's. dropout = 0 skips every mask step.

Forward, for each sequence b and head h:
  pass 0: pack the head: qs = q / sqrt(hs) as rows, k transposed (hsp, Tp) so that a tile reads 16
          keys as one vector, v as rows; Tp = T rounded up to 16, zero padding.
  then for each block of 4 query rows i0..i0+3, over its keys 0..i0+3 in chunks of KC:
  pass 1: scores s = qs @ kT for the chunk (4 x 64 and 4 x 16 tiles, 16 keys past the diagonal
          at most; the row pass masks them);
  pass 2: online softmax per row: m' = max(m, max s); s = e^(s - m'); l = l e^(m - m') + sum s;
          o *= e^(m - m') (dropout: then s *= mask / (1 - p));
  pass 3: o += s @ v (a 4 x hsp tile);
  finally out = o / l and lse = m + log l.

Backward (FlashAttention-2), for each sequence, head and block of QB query rows:
  D_i = dout_i . out_i; for every 4 rows of the block, over keys 0..i:
    P = e^(qs @ kT - lse) (recomputed), dPd = dout @ vT; with dropout Z = mask / (1 - p):
    dP = dPd Z and the probabilities that multiplied v are P Z;
    dS = P (dP - D)          (ds_row; D = sum_j P Z dPd, the same identity with dropout)
    dq = dS @ k / sqrt(hs)   (a 4 x hsp tile over the row's keys)
  then for the whole block, 4 keys at a time: dk += dS^T @ qs, dv += (P Z)^T @ dout (tiles whose
  inner dimension is the block's QB rows). P and dS of one block: 2 QB Tp floats of scratch.
"""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.dropout_rng import SITE_ATTENTION, keep, keep_threshold, stream_key
from crystalline.model.kernels.rowsoftmax import ds_row, exp_row
from crystalline.model.kernels.simd import LANES, exp32, vdot, vmax
from crystalline.model.kernels.tile import tile4x16, tile4x32, tile4x48, tile4x64, transpose16

ROWS = 4      # query rows per register tile
KC = 256      # keys per online-softmax chunk of the forward
QB = 64       # query rows per block of the backward (the inner dimension of the dk, dv tiles)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _ceil16(n):
    return (n + LANES - 1) // LANES * LANES


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def scratch_floats(T, hs):
    """Floats of scratch that attention_forward and attention_backward need at (T, hs): seven
    packed (Tp, hsp) copies of a head, the backward's two QB x Tp blocks of P and dS, and a row
    of D (Tp = T, hsp = hs rounded up to 16)."""
    Tp, hsp = _ceil16(T), _ceil16(hs)
    forward = 3 * Tp * hsp + ROWS * KC + 2 * ROWS * hsp + 2 * ROWS
    backward = 7 * Tp * hsp + 2 * QB * Tp + Tp + ROWS * hsp
    return max(forward, backward)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_forward(out, lse, qkv, B, T, C, NH, scratch=None, dropout=0.0, seed=0, step=0,
                      seq0=0, layer=0):
    """out (N, C) = causal attention of qkv (N, 3C); lse (B, NH, T) float32. scratch: at least
    scratch_floats(T, C // NH) float32, overwritten (None allocates one). Sequence b draws its
    dropout mask as sequence seq0 + b of the global batch."""
    if scratch is None:
        _forward(out.reshape(-1), lse.reshape(-1), qkv.reshape(-1), B, T, C, NH,
                 np.empty(scratch_floats(T, C // NH), np.float32), dropout, seed, step, seq0, layer)
    else:
        _forward(out.reshape(-1), lse.reshape(-1), qkv.reshape(-1), B, T, C, NH,
                 scratch.reshape(-1), dropout, seed, step, seq0, layer)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate=True, scratch=None,
                       dropout=0.0, seed=0, step=0, seq0=0, layer=0):
    """dqkv (N, 3C) += gradient of sum(out * dout) (accumulate=False overwrites it, no zeroing
    pass needed); out and lse as the forward left them; scratch and dropout arguments as in
    attention_forward (the same values regenerate the same mask)."""
    if scratch is None:
        _backward(dqkv.reshape(-1), dout.reshape(-1), qkv.reshape(-1), out.reshape(-1),
                  lse.reshape(-1), B, T, C, NH, accumulate,
                  np.empty(scratch_floats(T, C // NH), np.float32), dropout, seed, step, seq0, layer)
    else:
        _backward(dqkv.reshape(-1), dout.reshape(-1), qkv.reshape(-1), out.reshape(-1),
                  lse.reshape(-1), B, T, C, NH, accumulate, scratch.reshape(-1), dropout, seed,
                  step, seq0, layer)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _check(work, T, hs, dropout):
    if work.size < scratch_floats(T, hs):
        raise ValueError("attention scratch holds fewer than scratch_floats(T, hs) floats")
    if not 0.0 <= dropout < 1.0:
        raise ValueError("attention dropout must be in [0, 1)")


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _wide_tile(hsp, c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate):
    """A 4 x hsp tile (hsp a multiple of 16) as 4 x 64 tiles and one narrower rest."""
    for c0 in range(0, hsp, 64):
        w = min(64, hsp - c0)
        if w == 64:
            tile4x64(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        elif w == 48:
            tile4x48(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        elif w == 32:
            tile4x32(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)
        else:
            tile4x16(c, c_off + c0, ldc, a, a_off, ars, aks, b, b_off + c0, ldb, K, accumulate)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _scores(s, s_off, lds, a, a_off, bT, Tp, hsp, width):
    """s[r, :width] = a[r] @ bT[:, :width] for the 4 packed rows at a_off (width: a multiple of
    16): 4 x 64 tiles, then 4 x 16 ones for the rest."""
    j0 = 0
    while j0 + 64 <= width:
        tile4x64(s, s_off + j0, lds, a, a_off, hsp, 1, bT, j0, Tp, hsp, False)
        j0 += 64
    while j0 < width:
        tile4x16(s, s_off + j0, lds, a, a_off, hsp, 1, bT, j0, Tp, hsp, False)
        j0 += LANES


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _pack_rows(dst, src, row0, ld, col, T, Tp, hs, hsp, scale):
    """dst[j * hsp + d] = scale * src[(row0 + j) * ld + col + d] for j < T, d < hs; 0 elsewhere
    up to (Tp, hsp)."""
    for j in range(Tp):
        base = j * hsp
        if j < T:
            s = (row0 + j) * ld + col
            for d in range(hs):
                dst[base + d] = scale * src[s + d]
            for d in range(hs, hsp):
                dst[base + d] = 0.0
        else:
            for d in range(hsp):
                dst[base + d] = 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _pack_transposed(dst, src, row0, ld, col, T, Tp, hs, hsp):
    """dst[d * Tp + j] = src[(row0 + j) * ld + col + d] for j < T, d < hs; 0 elsewhere up to
    (hsp, Tp). Whole 16 x 16 blocks move through registers (transpose16)."""
    full = T // LANES * LANES if hs % LANES == 0 else 0
    for j0 in range(0, full, LANES):
        for d0 in range(0, hs, LANES):
            transpose16(dst, d0 * Tp + j0, Tp, src, (row0 + j0) * ld + col + d0, ld,
                        np.float32(1.0))
    for d in range(hsp):
        for j in range(full if d < hs else 0, Tp):
            dst[d * Tp + j] = src[(row0 + j) * ld + col + d] if (j < T and d < hs) else 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _drop_row(x, off, n, key, pos0, threshold, inv_keep):
    """x[off + j] *= mask(pos0 + j) / (1 - p) for j < n."""
    for j in range(n):
        if keep(key, pos0 + j, threshold):
            x[off + j] *= inv_keep
        else:
            x[off + j] = 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward(out, lse, qkv, B, T, C, NH, work, dropout, seed, step, seq0, layer):
    hs = C // NH
    _check(work, T, hs, dropout)
    hsp, Tp, C3 = _ceil16(hs), _ceil16(T), 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    qs, kT, v = work[:Tp * hsp], work[Tp * hsp:2 * Tp * hsp], work[2 * Tp * hsp:3 * Tp * hsp]
    rest = 3 * Tp * hsp
    s = work[rest:rest + ROWS * KC]                                  # (4, KC) scores / probabilities
    o = work[rest + ROWS * KC:rest + ROWS * KC + ROWS * hsp]         # (4, hsp) unnormalised output
    ml = work[rest + ROWS * KC + ROWS * hsp:rest + ROWS * KC + ROWS * hsp + 2 * ROWS]  # m, l per row
    threshold = keep_threshold(dropout)
    inv_keep = np.float32(1.0 / (1.0 - dropout))
    key = np.uint64(0)
    for b in range(B):
        if dropout > 0.0:
            key = stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION)
        for h in range(NH):
            col = h * hs
            _pack_rows(qs, qkv, b * T, C3, col, T, Tp, hs, hsp, scale)
            _pack_transposed(kT, qkv, b * T, C3, C + col, T, Tp, hs, hsp)
            _pack_rows(v, qkv, b * T, C3, 2 * C + col, T, Tp, hs, hsp, np.float32(1.0))
            for i0 in range(0, T, ROWS):
                iend = min(i0 + ROWS, T)                 # the block sees keys 0 .. iend - 1
                for k0 in range(0, iend, KC):
                    k1 = min(k0 + KC, iend)
                    width = _ceil16(k1 - k0)
                    _scores(s, 0, KC, qs, i0 * hsp, kT[k0:], Tp, hsp, width)
                    for r in range(ROWS):
                        i = i0 + r
                        n = min(i + 1, k1) - k0          # rows past T (padding) see every key
                        m_new = vmax(s, r * KC, n)
                        if k0 > 0:
                            m_new = max(m_new, ml[r])
                        total = exp_row(s, r * KC, n, width, m_new)
                        if k0 == 0:
                            ml[ROWS + r] = total
                        else:
                            alpha = exp32(ml[r] - m_new)
                            ml[ROWS + r] = ml[ROWS + r] * alpha + total
                            for d in range(hsp):
                                o[r * hsp + d] *= alpha
                        ml[r] = m_new
                        if dropout > 0.0 and i < T:
                            _drop_row(s, r * KC, n, key, (h * T + i) * T + k0, threshold, inv_keep)
                    _wide_tile(hsp, o, 0, hsp, s, 0, KC, 1, v, k0 * hsp, hsp, k1 - k0, k0 > 0)
                for r in range(iend - i0):
                    i = i0 + r
                    inv = np.float32(1.0) / ml[ROWS + r]
                    base = (b * T + i) * C + col
                    for d in range(hs):
                        out[base + d] = o[r * hsp + d] * inv
                    lse[(b * NH + h) * T + i] = ml[r] + np.float32(math.log(ml[ROWS + r]))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward(dqkv, dout, qkv, out, lse, B, T, C, NH, accumulate, work, dropout, seed, step,
              seq0, layer):
    hs = C // NH
    _check(work, T, hs, dropout)
    hsp, Tp, C3 = _ceil16(hs), _ceil16(T), 3 * C
    scale = np.float32(1.0 / math.sqrt(hs))
    H = Tp * hsp
    qs, kT, vT, k = work[:H], work[H:2 * H], work[2 * H:3 * H], work[3 * H:4 * H]
    dy, dk, dv = work[4 * H:5 * H], work[5 * H:6 * H], work[6 * H:7 * H]
    p = work[7 * H:7 * H + QB * Tp]                          # (QB, Tp) P, then P Z
    ds = work[7 * H + QB * Tp:7 * H + 2 * QB * Tp]           # (QB, Tp) dPd, then dS
    D = work[7 * H + 2 * QB * Tp:7 * H + 2 * QB * Tp + Tp]
    dq = work[7 * H + 2 * QB * Tp + Tp:7 * H + 2 * QB * Tp + Tp + ROWS * hsp]   # (4, hsp)
    threshold = keep_threshold(dropout)
    inv_keep = np.float32(1.0 / (1.0 - dropout))
    key = np.uint64(0)
    for b in range(B):
        if dropout > 0.0:
            key = stream_key(seed, step, seq0 + b, layer, SITE_ATTENTION)
        for h in range(NH):
            col = h * hs
            _pack_rows(qs, qkv, b * T, C3, col, T, Tp, hs, hsp, scale)
            _pack_transposed(kT, qkv, b * T, C3, C + col, T, Tp, hs, hsp)
            _pack_transposed(vT, qkv, b * T, C3, 2 * C + col, T, Tp, hs, hsp)
            _pack_rows(k, qkv, b * T, C3, C + col, T, Tp, hs, hsp, np.float32(1.0))
            _pack_rows(dy, dout, b * T, C, col, T, Tp, hs, hsp, np.float32(1.0))
            dk[:] = 0.0
            dv[:] = 0.0
            for i in range(T):
                D[i] = vdot(dout, (b * T + i) * C + col, out, (b * T + i) * C + col, hs)
            for q0 in range(0, T, QB):
                q1 = min(q0 + QB, T)
                width = _ceil16(q1)                      # the block's rows see keys 0 .. q1 - 1
                for i0 in range(q0, q1, ROWS):
                    iend = min(i0 + ROWS, T)
                    r0 = (i0 - q0) * Tp
                    _scores(p, r0, Tp, qs, i0 * hsp, kT, Tp, hsp, _ceil16(iend))
                    _scores(ds, r0, Tp, dy, i0 * hsp, vT, Tp, hsp, _ceil16(iend))
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
                                    ds[off + j] = p[off + j] * (ds[off + j] * inv_keep - D_i)
                                    p[off + j] *= inv_keep
                                else:
                                    ds[off + j] = -p[off + j] * D_i
                                    p[off + j] = 0.0
                            for j in range(n, width):
                                ds[off + j] = 0.0
                        else:
                            ds_row(p, off, ds, off, n, width, D_i)
                    # dq[i0:i0+4] = dS[i0:i0+4, :iend] @ k[:iend] / sqrt(hs)
                    _wide_tile(hsp, dq, 0, hsp, ds, r0, Tp, 1, k, 0, hsp, iend, False)
                    for r in range(iend - i0):
                        base = (b * T + i0 + r) * C3 + col
                        for d in range(hs):
                            g = scale * dq[r * hsp + d]
                            dqkv[base + d] = dqkv[base + d] + g if accumulate else g
                # dk[:q1] += dS[q0:q1, :q1]^T @ qs[q0:q1] ; dv[:q1] += (P Z)[q0:q1, :q1]^T @ dy[q0:q1]
                for j0 in range(0, q1, ROWS):
                    _wide_tile(hsp, dk, j0 * hsp, hsp, ds, j0, 1, Tp, qs, q0 * hsp, hsp, q1 - q0, True)
                    _wide_tile(hsp, dv, j0 * hsp, hsp, p, j0, 1, Tp, dy, q0 * hsp, hsp, q1 - q0, True)
            for j in range(T):
                base = (b * T + j) * C3 + C + col
                for d in range(hs):
                    gk, gv = dk[j * hsp + d], dv[j * hsp + d]
                    if accumulate:
                        dqkv[base + d] += gk
                        dqkv[base + C + d] += gv
                    else:
                        dqkv[base + d] = gk
                        dqkv[base + C + d] = gv
