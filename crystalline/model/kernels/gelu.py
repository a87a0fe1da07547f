"""GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise over (n,).

math.tanh does not vectorise in Numba (a libm call per element), which made GELU cost more than
the matmuls around it. tanh_rational is Eigen's float32 rational approximation (odd degree-13
numerator over even degree-6 denominator, input clamped to +-7.9053): only mul/add/div/min/max;
within ~3e-7 absolute of np.tanh (tests/test_kernels.py checks). The loops run 16 lanes wide
through gelu_vec.py (bitwise the scalar code below, which does the n % 16 tail).

The model (float32) uses the pair gelu_forward_and_grad / gelu_backward_from_grad: one tanh
serves gelu(x) and gelu'(x), so the backward is one product instead of a second tanh."""

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.gelu_vec import (CLAMP as _CLAMP, HALF as _HALF, ONE as _ONE,
                                                A as _A, K as _K, P as _P, Q as _Q,
                                                THREE_A as _3A, gelu_and_grad_vec, gelu_vec)
from crystalline.model.kernels.simd import LANES


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


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _th(x):
    return tanh_rational(_K * (x + _A * x * x * x))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _gelu_from(x, th):
    return _HALF * x * (_ONE + th)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _grad_from(x, th):
    dth = _K * (_ONE + _3A * x * x) * (_ONE - th * th)
    return _HALF * (_ONE + th) + _HALF * x * dth


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _gelu(x):
    return _gelu_from(x, _th(x))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_forward(out, inp, n):
    """out[:n] = gelu(inp.flat[:n])."""
    o, x = out.reshape(-1), inp.reshape(-1)
    gelu_vec(o, 0, x, 0, n // LANES)
    for i in range(n // LANES * LANES, n):
        o[i] = _gelu(x[i])


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_backward(dinp, inp, dout, n):
    """Accumulate dinp += gelu'(inp) * dout."""
    for i in range(n):
        x = inp[i]
        dinp[i] += _grad_from(x, _th(x)) * dout[i]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_forward_and_grad(out, grad, inp, n):
    """out = gelu(inp) and grad = gelu'(inp) (grad may be inp): one tanh serves both, so the
    backward (gelu_backward_from_grad) is a product."""
    o, g, x = out.reshape(-1), grad.reshape(-1), inp.reshape(-1)
    gelu_and_grad_vec(o, 0, g, 0, x, 0, n // LANES)
    for i in range(n // LANES * LANES, n):
        th = _th(x[i])
        o[i] = _gelu_from(x[i], th)
        g[i] = _grad_from(x[i], th)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gelu_backward_from_grad(dinp, grad, dout, n):
    """dinp = grad * dout (overwrites; dinp may be grad), grad = gelu'(inp) from
    gelu_forward_and_grad."""
    for i in range(n):
        dinp[i] = grad[i] * dout[i]
