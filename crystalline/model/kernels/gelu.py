"""GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise over (n,).

math.tanh does not vectorise in Numba (a libm call per element), which made GELU cost more than
the matmuls around it. tanh_rational is Eigen's float32 rational approximation (odd degree-13
numerator over even degree-6 denominator, input clamped to +-7.9053): only mul/add/div/min/max,
so LLVM vectorises the loop; within ~3e-7 absolute of np.tanh (tests/test_kernels.py checks).

The model uses the pair gelu_forward_keep_grad / gelu_backward_from_grad: the forward leaves
gelu'(x) where x was, so the backward is one product instead of a second tanh."""

import math

import numpy as np
from numba import njit

from crystalline.config import FASTMATH

GELU_K = math.sqrt(2.0 / math.pi)

# float32 constants: a float64 literal would promote every element to float64 (half the lanes)
_K = np.float32(GELU_K)
_A = np.float32(0.044715)
_3A = np.float32(3.0 * 0.044715)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)
_CLAMP = np.float32(7.90531110763549805)
_P = tuple(np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                    5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                    4.89352455891786e-03))
_Q = tuple(np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                    4.89352518554385e-03))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def tanh_rational(x):
    """In the precision of x: float32 for float32 x (the kernels), float64 for a Python float."""
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _P[0] + _P[1]
    p = x2 * p + _P[2]
    p = x2 * p + _P[3]
    p = x2 * p + _P[4]
    p = x2 * p + _P[5]
    p = x2 * p + _P[6]
    q = x2 * _Q[0] + _Q[1]
    q = x2 * q + _Q[2]
    q = x2 * q + _Q[3]
    return x * p / q


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_forward(out, inp, n):
    for i in range(n):
        x = inp[i]
        out[i] = _HALF * x * (_ONE + tanh_rational(_K * (x + _A * x * x * x)))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_backward(dinp, inp, dout, n):
    """Accumulate dinp += gelu'(inp) * dout."""
    for i in range(n):
        x = inp[i]
        th = tanh_rational(_K * (x + _A * x * x * x))
        dth = _K * (_ONE + _3A * x * x) * (_ONE - th * th)
        dinp[i] += (_HALF * (_ONE + th) + _HALF * x * dth) * dout[i]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_forward_and_grad(out, grad, inp, n):
    """out = gelu(inp) and grad = gelu'(inp) (grad may be inp): one tanh serves both, so the
    backward (gelu_backward_from_grad) is a product."""
    for i in range(n):
        x = inp[i]
        th = tanh_rational(_K * (x + _A * x * x * x))
        dth = _K * (_ONE + _3A * x * x) * (_ONE - th * th)
        out[i] = _HALF * x * (_ONE + th)
        grad[i] = _HALF * (_ONE + th) + _HALF * x * dth


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_backward_from_grad(dinp, grad, dout, n):
    """dinp = grad * dout (overwrites; dinp may be grad), grad = gelu'(inp) from
    gelu_forward_and_grad."""
    for i in range(n):
        dinp[i] = grad[i] * dout[i]
