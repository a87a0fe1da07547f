"""Counter-based dropout masks: whether an element is kept is a pure function of

    (seed, step, sequence index in the global batch, layer, site, position)

so any sphere tree, any worker order and the backward's recomputation draw the same masks, and
nothing is stored between forward and backward. No state, no generator object: a 64-bit
SplitMix64 finaliser of the key, then of the key mixed with the position.

    key = stream_key(seed, step, seq, layer, site)    # once per (sequence, layer, site)
    keep(key, pos, threshold)                         # True: keep element `pos`, scale 1/(1-p)
    threshold = keep_threshold(p)                     # 0 <= p < 1; p = 0 keeps everything

Sites (`SITE_*`) name where in the model a mask is drawn; `pos` is the element's flat index
within that site of that sequence (t * C + c for an activation row, (h * T + i) * T + j for
attention probabilities). dropout_mask() returns a whole mask, for tests and references.
"""

import numpy as np
from numba import njit

from crystalline.config import FASTMATH

SITE_EMBEDDING = 0   # after token + position embedding, (T, C)
SITE_ATTENTION = 1   # attention probabilities, (NH, T, T)
SITE_ATTN_OUT = 2    # the attention branch before the residual add, (T, C)
SITE_MLP_OUT = 3     # the MLP branch before the residual add, (T, C)

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def mix64(x):
    """SplitMix64's finaliser: a bijection of uint64 whose output bits each depend on all input
    bits."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def stream_key(seed, step, seq, layer, site):
    """uint64 key of one (seed, step, sequence, layer, site) stream; all arguments are ints >= 0."""
    k = mix64(np.uint64(seed) + _GAMMA)
    k = mix64(k ^ (np.uint64(step) + _GAMMA))
    k = mix64(k ^ (np.uint64(seq) + _GAMMA))
    k = mix64(k ^ (np.uint64(layer) + _GAMMA))
    return mix64(k ^ (np.uint64(site) + _GAMMA))


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def keep_threshold(p):
    """The uint64 that keep() compares against for drop probability p (0 <= p < 1)."""
    return np.uint64(np.floor(p * 4294967296.0))


@njit(nogil=True, cache=True, fastmath=FASTMATH, inline="always")
def keep(key, pos, threshold):
    """Whether element `pos` of the stream `key` is kept: its 32 high hash bits, read as a
    uniform integer in [0, 2^32), are >= threshold (probability 1 - p)."""
    return (mix64(key ^ (np.uint64(pos) * _GAMMA)) >> np.uint64(32)) >= threshold


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def dropout_mask(seed, step, seq, layer, site, n, p):
    """(n,) bool: keep() of positions 0..n-1 of one stream, for tests and references."""
    key = stream_key(seed, step, seq, layer, site)
    threshold = keep_threshold(p)
    out = np.empty(n, np.bool_)
    for pos in range(n):
        out[pos] = keep(key, pos, threshold)
    return out
