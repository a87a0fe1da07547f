"""GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise over (n,).

math.tanh does not vectorise in Numba (a libm call per element), which made GELU cost more than
the matmuls around it. tanh_rational is Eigen's float32 rational approximation (odd degree-13
numerator over even degree-6 denominator, input clamped to +-7.9053): only mul/add/div/min/max,
so LLVM vectorises the loop; within ~3e-7 absolute of np.tanh (tests/test_kernels.py checks)."""

import math

from numba import njit

from crystalline.config import FASTMATH

GELU_K = math.sqrt(2.0 / math.pi)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def tanh_rational(x):
    x = min(max(x, -7.90531110763549805), 7.90531110763549805)
    x2 = x * x
    p = x2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = x2 * p + -8.60467152213735e-11
    p = x2 * p + 5.12229709037114e-08
    p = x2 * p + 1.48572235717979e-05
    p = x2 * p + 6.37261928875436e-04
    p = x2 * p + 4.89352455891786e-03
    q = x2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = x2 * q + 2.26843463243900e-03
    q = x2 * q + 4.89352518554385e-03
    return x * p / q


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_forward(out, inp, n):
    for i in range(n):
        x = inp[i]
        out[i] = 0.5 * x * (1.0 + tanh_rational(GELU_K * (x + 0.044715 * x * x * x)))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_backward(dinp, inp, dout, n):
    """Accumulate dinp += gelu'(inp) * dout."""
    for i in range(n):
        x = inp[i]
        th = tanh_rational(GELU_K * (x + 0.044715 * x * x * x))
        dth = GELU_K * (1.0 + 3.0 * 0.044715 * x * x) * (1.0 - th * th)
        dinp[i] += (0.5 * (1.0 + th) + 0.5 * x * dth) * dout[i]
