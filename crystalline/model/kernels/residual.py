"""Residual add out = inp1 + inp2 over n elements (flat views of (N, C)).

The model's backward does not call residual_backward: like llm.c's dresidual stream, the
gradient of the residual stream is one (N, C) buffer that each branch's backward accumulates
into, which is exactly residual_backward without the copy. The kernel is kept for the tests."""

from numba import njit

from crystalline.config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def residual_forward(out, inp1, inp2, n):
    for i in range(n):
        out[i] = inp1[i] + inp2[i]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def residual_backward(dinp1, dinp2, dout, n):
    for i in range(n):
        dinp1[i] += dout[i]
        dinp2[i] += dout[i]
