"""Vectorised row reductions and a float32 exp, for kernels whose loops LLVM will not vectorise.

Without fastmath LLVM may not reorder a floating-point reduction, so `for j: s += x[j]` runs one
scalar add per element (a 3-4 cycle dependency chain), and Numba's max() branches on NaN. These
helpers emit the vector loop themselves (LLVM IR, 16 float32 lanes per step) in a FIXED order:
lane k sums elements k, k + 16, k + 32, ...; the 16 lanes are then added as a pairwise tree and
the tail (n % 16 elements) last. Deterministic, so results are bitwise reproducible; sums and dot
products accumulate in float64.

    vsum(x, off, n)               sum of x.flat[off : off + n]              (float64)
    vdot(a, a_off, b, b_off, n)   sum of a.flat[a_off + j] * b.flat[b_off + j]  (float64)
    vdot3(a, a_off, b, b_off, c, c_off, n)   the same over a * b * c      (float64)
    vmax(x, off, n)               max of x.flat[off : off + n], n >= 1       (float32)
    exp32(x)                      e^x for float32 x <= 0 (clamped at -87), ~2 ulp; vectorises

x, a, b: C-contiguous float32 arrays of any rank, addressed by element offset (a row in place).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from crystalline.config import FASTMATH

LANES = 16
_F32V = ir.VectorType(ir.FloatType(), LANES)
_F64V = ir.VectorType(ir.DoubleType(), LANES)


def _is_array(arr, dtype):
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.layout == "C"


def _is_f32_array(arr):
    return _is_array(arr, types.float32)


def _arg_values(context, builder, sig, args):
    """(integer, pointer, const) for an intrinsic's codegen: integer(i) is argument i as an intp,
    pointer(i, j) the address of array argument i's element at the offset held by argument j,
    const(v) an intp constant."""
    intp = context.get_value_type(types.intp)

    def integer(i):
        return context.cast(builder, args[i], sig.args[i], types.intp)

    def pointer(i, j):
        return _base(context, builder, sig.args[i], args[i], sig.args[j], args[j])

    def const(v):
        return ir.Constant(intp, v)
    return integer, pointer, const


def _store_tile(builder, acc, c_ptr, ldc, add, const):
    """c[r * ldc + v * LANES + lane] = acc[r][v][lane], or += where the IR boolean `add` is true."""
    for r, row in enumerate(acc):
        c_row = builder.gep(c_ptr, [builder.mul(const(r), ldc)])
        for v, accumulator in enumerate(row):
            ptr = builder.bitcast(builder.gep(c_row, [const(v * LANES)]), _F32V.as_pointer())
            value = builder.load(accumulator)
            with builder.if_else(add) as (then, otherwise):
                with then:
                    builder.store(builder.fadd(builder.load(ptr, align=4), value), ptr, align=4)
                with otherwise:
                    builder.store(value, ptr, align=4)


def _splat(builder, value):
    """A LANES-wide vector holding the IR scalar `value` in every lane."""
    vtype = ir.VectorType(value.type, LANES)
    undef = ir.Constant(vtype, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                                            [0] * LANES))


def _base(context, builder, arr_type, arr, off_type, off):
    ary = context.make_array(arr_type)(context, builder, arr)
    return builder.gep(ary.data, [context.cast(builder, off, off_type, types.intp)])


def _vector_loop(context, builder, nvec_type, nvec, body):
    """for v in range(nvec): body(v * LANES) (an element offset, intp)."""
    n = context.cast(builder, nvec, nvec_type, types.intp)
    with cgutils.for_range(builder, n) as loop:
        body(builder.mul(loop.index, ir.Constant(loop.index.type, LANES)))


def _load(builder, base, elem_off):
    ptr = builder.bitcast(builder.gep(base, [elem_off]), _F32V.as_pointer())
    return builder.load(ptr, align=4)


def _tree(builder, vec, combine):
    """Combine the lanes pairwise: (0+8, 1+9, ...), then halves again, down to lane 0."""
    width = LANES
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                          list(range(width))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                          list(range(width, 2 * width))))
        vec = combine(lo, hi)
    return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))


@intrinsic
def _vsum_body(typingctx, arr, off, nvec):
    """Sum of the first nvec * 16 floats at arr.flat[off:], 16 float64 lanes."""
    if not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        base = _base(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F64V, [0.0] * LANES))

        def body(e):
            x = builder.fpext(_load(builder, base, e), _F64V)
            builder.store(builder.fadd(builder.load(acc), x), acc)
        _vector_loop(context, builder, sig.args[2], args[2], body)
        return _tree(builder, builder.load(acc), builder.fadd)
    return types.float64(arr, off, nvec), codegen


@intrinsic
def _vdot_body(typingctx, a, a_off, b, b_off, nvec):
    if not (_is_f32_array(a) and _is_f32_array(b)):
        return None

    def codegen(context, builder, sig, args):
        pa = _base(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        pb = _base(context, builder, sig.args[2], args[2], sig.args[3], args[3])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F64V, [0.0] * LANES))

        def body(e):
            x = builder.fpext(_load(builder, pa, e), _F64V)
            y = builder.fpext(_load(builder, pb, e), _F64V)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(x, y)), acc)
        _vector_loop(context, builder, sig.args[4], args[4], body)
        return _tree(builder, builder.load(acc), builder.fadd)
    return types.float64(a, a_off, b, b_off, nvec), codegen


@intrinsic
def _vdot3_body(typingctx, a, a_off, b, b_off, c, c_off, nvec):
    if not (_is_f32_array(a) and _is_f32_array(b) and _is_f32_array(c)):
        return None

    def codegen(context, builder, sig, args):
        pa = _base(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        pb = _base(context, builder, sig.args[2], args[2], sig.args[3], args[3])
        pc = _base(context, builder, sig.args[4], args[4], sig.args[5], args[5])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F64V, [0.0] * LANES))

        def body(e):
            x = builder.fpext(_load(builder, pa, e), _F64V)
            y = builder.fpext(_load(builder, pb, e), _F64V)
            z = builder.fpext(_load(builder, pc, e), _F64V)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(builder.fmul(x, y), z)), acc)
        _vector_loop(context, builder, sig.args[6], args[6], body)
        return _tree(builder, builder.load(acc), builder.fadd)
    return types.float64(a, a_off, b, b_off, c, c_off, nvec), codegen


@intrinsic
def _vmax_body(typingctx, arr, off, nvec):
    if not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        base = _base(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32V, [-math.inf] * LANES))

        def vmax(p, q):
            return builder.select(builder.fcmp_ordered(">", p, q), p, q)

        def body(e):
            builder.store(vmax(builder.load(acc), _load(builder, base, e)), acc)
        _vector_loop(context, builder, sig.args[2], args[2], body)
        return _tree(builder, builder.load(acc), vmax)
    return types.float32(arr, off, nvec), codegen


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def vsum(x, off, n):
    nv = n // LANES
    s = _vsum_body(x, off, nv)
    flat = x.reshape(-1)
    for j in range(off + nv * LANES, off + n):
        s += flat[j]
    return s


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def vdot(a, a_off, b, b_off, n):
    nv = n // LANES
    s = _vdot_body(a, a_off, b, b_off, nv)
    fa, fb = a.reshape(-1), b.reshape(-1)
    for j in range(nv * LANES, n):
        s += np.float64(fa[a_off + j]) * fb[b_off + j]
    return s


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def vdot3(a, a_off, b, b_off, c, c_off, n):
    nv = n // LANES
    s = _vdot3_body(a, a_off, b, b_off, c, c_off, nv)
    fa, fb, fc = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    for j in range(nv * LANES, n):
        s += np.float64(fa[a_off + j]) * fb[b_off + j] * fc[c_off + j]
    return s


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def vmax(x, off, n):
    nv = n // LANES
    m = _vmax_body(x, off, nv)
    flat = x.reshape(-1)
    for j in range(off + nv * LANES, off + n):
        v = flat[j]
        m = v if v > m else m
    return m


@intrinsic
def _pow2(typingctx, k):
    """float32 2**k for an integral float32 k in [-126, 127], built from its exponent bits."""
    if k != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i = builder.fptosi(args[0], ir.IntType(32))
        bits = builder.shl(builder.add(i, ir.Constant(ir.IntType(32), 127)),
                           ir.Constant(ir.IntType(32), 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(k), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)        # ln 2 split so k * _LN2_HI is exact
_LN2_LO = np.float32(1.428606765330187e-06)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def exp32(x):
    """e^x = 2^k e^r, k = round(x / ln 2), |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial
    (truncation < 5e-9): only float32 mul/add/floor and an exponent-bit build, so it vectorises."""
    lo = np.float32(-87.0)
    x = x if x > lo else lo
    k = np.floor(x * _LOG2E + np.float32(0.5))
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _pow2(k)
