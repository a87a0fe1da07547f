"""Causal softmax rows and their backward as whole 16-lane vector passes (LLVM IR), for the
attention tiles: no scalar tails, no per-row float64 round trips.

    softmax_row(att, off, n, width)
        x = att.flat[off : off + width]; x[:n] = softmax(x[:n]); x[n:] = 0
    softmax_backward_row(p, p_off, d, d_off, n, width, scale)
        s = sum_{j < n} p[j] d[j];  d[j] = p[j] (d[j] - s) scale for j < n, 0 for n <= j < width

width: a multiple of 16, 1 <= n <= width. Entries past n are never read as numbers (they are
masked), so they may hold anything. Lane sums run in a fixed order (lane k takes elements k,
k + 16, ...; then a pairwise tree), so results are bitwise reproducible. e^x is exp32's
polynomial (simd.py) evaluated with fused multiply-adds.
"""

import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from crystalline.model.kernels.simd import (_F32V, _LN2_HI, _LN2_LO, _LOG2E, LANES, _is_f32_array,
                                            _splat, _tree)

_F32 = ir.FloatType()
_I32V = ir.VectorType(ir.IntType(32), LANES)
_TAYLOR = [1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0]


class _Vectors:
    """IR helpers over 16-lane float32 vectors for one kernel body."""

    def __init__(self, context, builder):
        self.b = builder
        self.intp = context.get_value_type(types.intp)
        module = builder.module
        fn3 = ir.FunctionType(_F32V, [_F32V] * 3)
        self.fma_fn = cgutils.get_or_insert_function(module, fn3, "llvm.fma.v16f32")
        self.floor_fn = cgutils.get_or_insert_function(module, ir.FunctionType(_F32V, [_F32V]),
                                                       "llvm.floor.v16f32")
        self.iota = ir.Constant(_I32V, list(range(LANES)))

    def splat(self, x):
        return ir.Constant(_F32V, [x] * LANES) if isinstance(x, float) else _splat(self.b, x)

    def ptr(self, base, v):
        """Pointer to vector v (elements 16 v ... 16 v + 15) from base."""
        offset = self.b.mul(v, ir.Constant(self.intp, LANES))
        return self.b.bitcast(self.b.gep(base, [offset]), _F32V.as_pointer())

    def load(self, base, v):
        return self.b.load(self.ptr(base, v), align=4)

    def store(self, value, base, v):
        self.b.store(value, self.ptr(base, v), align=4)

    def valid(self, v, n):
        """Lanes of vector v whose element index is < n."""
        first = self.b.trunc(self.b.mul(v, ir.Constant(self.intp, LANES)), ir.IntType(32))
        lanes = self.b.add(_splat(self.b, first), self.iota)
        limit = _splat(self.b, self.b.trunc(n, ir.IntType(32)))
        return self.b.icmp_signed("<", lanes, limit)

    def fma(self, a, b, c):
        return self.b.call(self.fma_fn, [a, b, c])

    def exp(self, x):
        """exp32 on 16 lanes: e^x = 2^k e^r for x <= 0 (clamped at -87)."""
        b = self.b
        lo = self.splat(-87.0)
        x = b.select(b.fcmp_ordered(">", x, lo), x, lo)
        k = b.call(self.floor_fn, [self.fma(x, self.splat(float(_LOG2E)), self.splat(0.5))])
        r = b.fsub(b.fsub(x, b.fmul(k, self.splat(float(_LN2_HI)))), b.fmul(k, self.splat(float(_LN2_LO))))
        p = self.splat(_TAYLOR[0])
        for c in _TAYLOR[1:]:
            p = self.fma(p, r, self.splat(c))
        exponent = b.shl(b.add(b.fptosi(k, _I32V), ir.Constant(_I32V, [127] * LANES)),
                         ir.Constant(_I32V, [23] * LANES))
        return b.fmul(p, b.bitcast(exponent, _F32V))

    def loop(self, start, stop, body):
        """for v in range(start, stop): body(v)."""
        with cgutils.for_range_slice(self.b, start, stop, ir.Constant(self.intp, 1)) as (v, _):
            body(v)


def _nvec(b, n, intp):
    """ceil(n / 16) as intp."""
    return b.udiv(b.add(n, ir.Constant(intp, LANES - 1)), ir.Constant(intp, LANES))


@intrinsic
def softmax_row(typingctx, att, off, n, width):
    if not _is_f32_array(att):
        return None
    sig = types.void(att, off, n, width)

    def codegen(context, builder, sig, args):
        V = _Vectors(context, builder)
        b, intp = builder, V.intp
        base = b.gep(context.make_array(sig.args[0])(context, builder, args[0]).data,
                     [context.cast(b, args[1], sig.args[1], types.intp)])
        n_ = context.cast(b, args[2], sig.args[2], types.intp)
        nv = _nvec(b, n_, intp)
        wv = b.udiv(context.cast(b, args[3], sig.args[3], types.intp), ir.Constant(intp, LANES))
        zero = ir.Constant(intp, 0)
        ninf = V.splat(-math.inf)
        m = cgutils.alloca_once_value(b, ninf)

        def gmax(p, q):
            return b.select(b.fcmp_ordered(">", p, q), p, q)

        def find_max(v):
            x = b.select(V.valid(v, n_), V.load(base, v), ninf)
            b.store(gmax(b.load(m), x), m)
        V.loop(zero, nv, find_max)
        top = V.splat(_tree(b, b.load(m), gmax))
        s = cgutils.alloca_once_value(b, V.splat(0.0))

        def exponentiate(v):
            e = b.select(V.valid(v, n_), V.exp(b.fsub(V.load(base, v), top)), V.splat(0.0))
            V.store(e, base, v)
            b.store(b.fadd(b.load(s), e), s)
        V.loop(zero, nv, exponentiate)
        inv = V.splat(b.fdiv(ir.Constant(_F32, 1.0), _tree(b, b.load(s), b.fadd)))
        V.loop(zero, nv, lambda v: V.store(b.fmul(V.load(base, v), inv), base, v))
        V.loop(nv, wv, lambda v: V.store(V.splat(0.0), base, v))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def softmax_backward_row(typingctx, p, p_off, d, d_off, n, width, scale):
    if not (_is_f32_array(p) and _is_f32_array(d)):
        return None
    sig = types.void(p, p_off, d, d_off, n, width, scale)

    def codegen(context, builder, sig, args):
        V = _Vectors(context, builder)
        b, intp = builder, V.intp

        def base(i):
            data = context.make_array(sig.args[i])(context, builder, args[i]).data
            return b.gep(data, [context.cast(b, args[i + 1], sig.args[i + 1], types.intp)])
        pb, db = base(0), base(2)
        n_ = context.cast(b, args[4], sig.args[4], types.intp)
        nv = _nvec(b, n_, intp)
        wv = b.udiv(context.cast(b, args[5], sig.args[5], types.intp), ir.Constant(intp, LANES))
        scale = V.splat(context.cast(b, args[6], sig.args[6], types.float32))
        zero, zeros = ir.Constant(intp, 0), V.splat(0.0)
        acc = cgutils.alloca_once_value(b, zeros)

        def dot(v):
            term = b.select(V.valid(v, n_), b.fmul(V.load(pb, v), V.load(db, v)), zeros)
            b.store(b.fadd(b.load(acc), term), acc)
        V.loop(zero, nv, dot)
        s = V.splat(_tree(b, b.load(acc), b.fadd))

        def gradient(v):
            g = b.fmul(b.fmul(V.load(pb, v), b.fsub(V.load(db, v), s)), scale)
            V.store(b.select(V.valid(v, n_), g, zeros), db, v)
        V.loop(zero, nv, gradient)
        V.loop(nv, wv, lambda v: V.store(zeros, db, v))
        return context.get_dummy_value()
    return sig, codegen
