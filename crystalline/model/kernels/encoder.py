"""Token + position embedding. out, dout: (N, C) with N = B * T; inp: (B, T) token ids."""

from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def encoder_forward(out, inp, wte, wpe, B, T, C):
    """out[b*T + t] = wte[inp[b, t]] + wpe[t]."""
    for b in range(B):
        for t in range(T):
            n = b * T + t
            ix = inp[b, t]
            for c in range(C):
                out[n, c] = wte[ix, c] + wpe[t, c]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def encoder_backward(dwte, dwpe, dout, inp, B, T, C):
    """Accumulate dout into the rows of dwte and dwpe that the forward read."""
    for b in range(B):
        for t in range(T):
            n = b * T + t
            ix = inp[b, t]
            for c in range(C):
                dwte[ix, c] += dout[n, c]
                dwpe[t, c] += dout[n, c]
