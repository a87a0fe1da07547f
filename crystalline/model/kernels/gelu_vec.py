"""GELU's loops on 16-lane float32 vectors (LLVM IR), for gelu.py.

LLVM vectorises gelu.py's scalar loops only 8 lanes wide on this CPU (it prefers 256-bit
vectors), and GELU's rational tanh (a division and twenty multiply-adds per element) makes the
loops compute-bound. These emit the 512-bit loop themselves, with the scalar code's operations in
its order (separate multiplies and adds, no fused multiply-add), so every element is bitwise what
the scalar loop gives. Each handles 16 * nvec elements from the given offsets; gelu.py does the
n % 16 tail with the scalar code.

    gelu_vec(out, o_off, inp, i_off, nvec)                          out = gelu(inp)
    gelu_and_grad_vec(out, o_off, grad, g_off, inp, i_off, nvec)    and grad = gelu'(inp)

out, grad, inp: C-contiguous float32 arrays addressed by element offset.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from crystalline.model.kernels.rowsoftmax import Vectors, _row_base
from crystalline.model.kernels.simd import _is_f32_array

# The formula's float32 constants (gelu.py's scalar code uses the same): GELU's tanh form,
# 0.5 x (1 + tanh(K (x + A x^3))), and Eigen's rational tanh on [-CLAMP, CLAMP].
K = np.float32(math.sqrt(2.0 / math.pi))
A = np.float32(0.044715)
THREE_A = np.float32(3.0 * 0.044715)
HALF, ONE = np.float32(0.5), np.float32(1.0)
CLAMP = np.float32(7.90531110763549805)
P = tuple(np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                   4.89352455891786e-03))
Q = tuple(np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                   4.89352518554385e-03))


class _Gelu:
    """GELU's formulas on 16-lane vectors, in gelu.py's order of operations."""

    def __init__(self, context, builder):
        self.V, self.b = Vectors(context, builder), builder

    def c(self, value):
        return self.V.splat(float(value))

    def mul(self, *factors):                  # left to right, as Python evaluates a * b * c
        product = factors[0]
        for f in factors[1:]:
            product = self.b.fmul(product, f)
        return product

    def tanh(self, u):
        b, c = self.b, self.c
        u = b.select(b.fcmp_ordered(">", c(-CLAMP), u), c(-CLAMP), u)       # max(u, -CLAMP)
        u = b.select(b.fcmp_ordered("<", c(CLAMP), u), c(CLAMP), u)         # min(u, CLAMP)
        u2 = b.fmul(u, u)
        p = b.fadd(b.fmul(u2, c(P[0])), c(P[1]))
        for coefficient in P[2:]:
            p = b.fadd(b.fmul(u2, p), c(coefficient))
        q = b.fadd(b.fmul(u2, c(Q[0])), c(Q[1]))
        for coefficient in Q[2:]:
            q = b.fadd(b.fmul(u2, q), c(coefficient))
        return b.fdiv(b.fmul(u, p), q)

    def th(self, x):
        """tanh(K (x + A x^3))."""
        return self.tanh(self.b.fmul(self.c(K), self.b.fadd(x, self.mul(self.c(A), x, x, x))))

    def gelu(self, x, th):
        return self.mul(self.c(HALF), x, self.b.fadd(self.c(ONE), th))

    def grad(self, x, th):
        b, c = self.b, self.c
        dth = self.mul(c(K), b.fadd(c(ONE), self.mul(c(THREE_A), x, x)),
                       b.fsub(c(ONE), b.fmul(th, th)))
        return b.fadd(b.fmul(c(HALF), b.fadd(c(ONE), th)), self.mul(c(HALF), x, dth))


def _loop(g, context, builder, sig, args, body):
    """for v in range(nvec): body(v), nvec the last argument."""
    nvec = context.cast(builder, args[-1], sig.args[-1], types.intp)
    g.V.loop(ir.Constant(g.V.intp, 0), nvec, body)
    return context.get_dummy_value()


@intrinsic
def gelu_vec(typingctx, out, o_off, inp, i_off, nvec):
    if not (_is_f32_array(out) and _is_f32_array(inp)):
        return None
    sig = types.void(out, o_off, inp, i_off, nvec)

    def codegen(context, builder, sig, args):
        g = _Gelu(context, builder)
        o, x = _row_base(context, builder, sig, args, 0), _row_base(context, builder, sig, args, 2)

        def body(v):
            xv = g.V.load(x, v)
            g.V.store(g.gelu(xv, g.th(xv)), o, v)
        return _loop(g, context, builder, sig, args, body)
    return sig, codegen


@intrinsic
def gelu_and_grad_vec(typingctx, out, o_off, grad, g_off, inp, i_off, nvec):
    if not (_is_f32_array(out) and _is_f32_array(grad) and _is_f32_array(inp)):
        return None
    sig = types.void(out, o_off, grad, g_off, inp, i_off, nvec)

    def codegen(context, builder, sig, args):
        g = _Gelu(context, builder)
        o, d, x = (_row_base(context, builder, sig, args, i) for i in (0, 2, 4))

        def body(v):
            xv = g.V.load(x, v)
            th = g.th(xv)
            g.V.store(g.gelu(xv, th), o, v)
            g.V.store(g.grad(xv, th), d, v)
        return _loop(g, context, builder, sig, args, body)
    return sig, codegen
