"""The row passes of flash attention (attention.py) as whole 16-lane vector loops (LLVM IR): no
scalar tails, no per-row float64 round trips.

    top = max_row(x, off, n)                          max of x.flat[off : off + n], n >= 1
    total = exp_row(x, off, n, width, shift)
        x = x.flat[off : off + width]; x[:n] = e^(x[:n] - shift); x[n:] = 0; total = sum x[:n]
    ds_row(p, p_off, d, d_off, n, width, D, scale)
        d[j] = p[j] (d[j] - D) scale for j < n, 0 for n <= j < width    (softmax backward, given D)

width: a multiple of 16, 0 <= n <= width. Entries past n are never read as numbers (they are
masked), so they may hold anything. Lane sums run in a fixed order (lane k takes elements k,
k + 16, ...; then a pairwise tree), so results are bitwise reproducible. e^x is exp32's
polynomial (simd.py) evaluated with fused multiply-adds, for x <= 0 (clamped at -87).
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


class Vectors:
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


def _row_base(context, builder, sig, args, i):
    data = context.make_array(sig.args[i])(context, builder, args[i]).data
    return builder.gep(data, [context.cast(builder, args[i + 1], sig.args[i + 1], types.intp)])


@intrinsic
def max_row(typingctx, x, off, n):
    if not _is_f32_array(x):
        return None
    sig = types.float32(x, off, n)

    def codegen(context, builder, sig, args):
        V = Vectors(context, builder)
        b, intp = builder, V.intp
        base = _row_base(context, builder, sig, args, 0)
        n_ = context.cast(b, args[2], sig.args[2], types.intp)
        ninf = V.splat(-math.inf)
        m = cgutils.alloca_once_value(b, ninf)

        def gmax(p, q):
            return b.select(b.fcmp_ordered(">", p, q), p, q)

        def find_max(v):
            b.store(gmax(b.load(m), b.select(V.valid(v, n_), V.load(base, v), ninf)), m)
        V.loop(ir.Constant(intp, 0), _nvec(b, n_, intp), find_max)
        return _tree(b, b.load(m), gmax)
    return sig, codegen


@intrinsic
def exp_row(typingctx, x, off, n, width, shift):
    if not _is_f32_array(x):
        return None
    sig = types.float32(x, off, n, width, shift)

    def codegen(context, builder, sig, args):
        V = Vectors(context, builder)
        b, intp = builder, V.intp
        base = _row_base(context, builder, sig, args, 0)
        n_ = context.cast(b, args[2], sig.args[2], types.intp)
        nv = _nvec(b, n_, intp)
        wv = b.udiv(context.cast(b, args[3], sig.args[3], types.intp), ir.Constant(intp, LANES))
        top = V.splat(context.cast(b, args[4], sig.args[4], types.float32))
        zeros = V.splat(0.0)
        s = cgutils.alloca_once_value(b, zeros)

        def exponentiate(v):
            e = b.select(V.valid(v, n_), V.exp(b.fsub(V.load(base, v), top)), zeros)
            V.store(e, base, v)
            b.store(b.fadd(b.load(s), e), s)
        V.loop(ir.Constant(intp, 0), nv, exponentiate)
        V.loop(nv, wv, lambda v: V.store(zeros, base, v))
        return _tree(b, b.load(s), b.fadd)
    return sig, codegen


@intrinsic
def ds_row(typingctx, p, p_off, d, d_off, n, width, D, scale):
    if not (_is_f32_array(p) and _is_f32_array(d)):
        return None
    sig = types.void(p, p_off, d, d_off, n, width, D, scale)

    def codegen(context, builder, sig, args):
        V = Vectors(context, builder)
        b, intp = builder, V.intp
        pb, db = _row_base(context, builder, sig, args, 0), _row_base(context, builder, sig, args, 2)
        n_ = context.cast(b, args[4], sig.args[4], types.intp)
        nv = _nvec(b, n_, intp)
        wv = b.udiv(context.cast(b, args[5], sig.args[5], types.intp), ir.Constant(intp, LANES))
        D_ = V.splat(context.cast(b, args[6], sig.args[6], types.float32))
        scale = V.splat(context.cast(b, args[7], sig.args[7], types.float32))
        zeros = V.splat(0.0)

        def gradient(v):
            g = b.fmul(b.fmul(V.load(pb, v), b.fsub(V.load(db, v), D_)), scale)
            V.store(b.select(V.valid(v, n_), g, zeros), db, v)
        V.loop(ir.Constant(intp, 0), nv, gradient)
        V.loop(nv, wv, lambda v: V.store(zeros, db, v))
        return context.get_dummy_value()
    return sig, codegen
