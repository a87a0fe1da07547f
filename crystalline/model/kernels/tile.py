"""Register tiles for attention's small per-head products, where a BLAS call costs more than its
arithmetic (a few thousand FLOPs per call), and the moves that feed them.

    tile4x16(c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate)   # 4 x 16 tile
    tile4x32(...), tile4x48(...), tile4x64(...)                 # 4 x 32, 4 x 48, 4 x 64 tiles
    transpose16(dst, d_off, ldd, src, s_off, lds, scale)    # a 16 x 16 block, transposed, scaled
    copy16(dst, d_off, src, s_off)                          # 16 contiguous floats

For r < 4 and the 16 (32, 48, 64) columns at c_off + r * ldc a tile computes

    c[r, :] (+)= sum_k a.flat[a_off + r * ars + k * aks] * b.flat[b_off + k * ldb + (0..15 | ... | 0..63)]

so `a` may be read along rows (aks = 1) or down columns (ars = 1: a transposed operand), `b` rows
are contiguous vectors. The accumulators (4 x 64: 16 of AVX-512's 32 registers) stay in
registers across k; every step is one fused multiply-add per 16 lanes, summed in k order
(deterministic). accumulate=False
overwrites c. All arrays: C-contiguous float32 of any rank, addressed by flat element offsets.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from crystalline.model.kernels.simd import (_F32V, LANES, _arg_values, _is_f32_array, _splat,
                                            _store_tile)

ROWS = 4


def _make_tile(vectors: int):
    """The intrinsic for a ROWS x (vectors * LANES) tile."""

    @intrinsic
    def tile(typingctx, c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate):
        if not all(_is_f32_array(x) for x in (c, a, b)):
            return None
        sig = types.void(c, c_off, ldc, a, a_off, ars, aks, b, b_off, ldb, K, accumulate)

        def codegen(context, builder, sig, args):
            integer, pointer, const = _arg_values(context, builder, sig, args)

            def vector_at(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), _F32V.as_pointer())

            c_ptr, a_ptr, b_ptr = pointer(0, 1), pointer(3, 4), pointer(7, 8)
            ldc_, ars_, aks_, ldb_ = integer(2), integer(5), integer(6), integer(9)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32V, [_F32V] * 3), "llvm.fma.v16f32")
            zero = ir.Constant(_F32V, [0.0] * LANES)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                   for _ in range(ROWS)]
            with cgutils.for_range(builder, integer(10)) as loop:
                k = loop.index
                b_row = builder.gep(b_ptr, [builder.mul(k, ldb_)])
                bv = [builder.load(vector_at(b_row, const(v * LANES)), align=4)
                      for v in range(vectors)]
                a_col = builder.gep(a_ptr, [builder.mul(k, aks_)])
                for r in range(ROWS):
                    s = builder.load(builder.gep(a_col, [builder.mul(const(r), ars_)]), align=4)
                    sv = _splat(builder, s)
                    for v in range(vectors):
                        builder.store(builder.call(fma, [sv, bv[v], builder.load(acc[r][v])]),
                                      acc[r][v])
            add = context.cast(builder, args[11], sig.args[11], types.boolean)
            _store_tile(builder, acc, c_ptr, ldc_, add, const)
            return context.get_dummy_value()

        return sig, codegen

    return tile


tile4x16 = _make_tile(1)
tile4x32 = _make_tile(2)
tile4x48 = _make_tile(3)
tile4x64 = _make_tile(4)


@intrinsic
def transpose16(typingctx, dst, d_off, ldd, src, s_off, lds, scale):
    """dst[d_off + c * ldd + r] = scale * src[s_off + r * lds + c] for r, c < 16: a 16 x 16 block
    transposed in registers (16 row loads, four rounds of lane shuffles, 16 row stores)."""
    if not (_is_f32_array(dst) and _is_f32_array(src)):
        return None
    sig = types.void(dst, d_off, ldd, src, s_off, lds, scale)

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)

        def integer(i):
            return context.cast(builder, args[i], sig.args[i], types.intp)

        def row(base, stride, r):
            offset = builder.mul(ir.Constant(intp, r), stride)
            return builder.bitcast(builder.gep(base, [offset]), _F32V.as_pointer())

        def data(i):
            return context.make_array(sig.args[i])(context, builder, args[i]).data

        d_ptr = builder.gep(data(0), [integer(1)])
        s_ptr = builder.gep(data(3), [integer(4)])
        scale = _splat(builder, context.cast(builder, args[6], sig.args[6], types.float32))
        rows = [builder.fmul(builder.load(row(s_ptr, integer(5), r), align=4), scale)
                for r in range(LANES)]
        m = LANES // 2
        while m:     # swap the off-diagonal m x m blocks of every 2m x 2m block
            lo = ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                             [j if not j & m else LANES + j - m for j in range(LANES)])
            hi = ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                             [j + m if not j & m else LANES + j for j in range(LANES)])
            for i in range(LANES):
                if not i & m:
                    a, b = rows[i], rows[i + m]
                    rows[i] = builder.shuffle_vector(a, b, lo)
                    rows[i + m] = builder.shuffle_vector(a, b, hi)
            m //= 2
        for c in range(LANES):
            builder.store(rows[c], row(d_ptr, integer(2), c), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy16(typingctx, dst, d_off, src, s_off):
    """dst[d_off:d_off + 16] = src[s_off:s_off + 16] (flat element offsets), one vector move."""
    if not (_is_f32_array(dst) and _is_f32_array(src)):
        return None
    sig = types.void(dst, d_off, src, s_off)

    def codegen(context, builder, sig, args):
        def vector(i):
            data = context.make_array(sig.args[i])(context, builder, args[i]).data
            offset = context.cast(builder, args[i + 1], sig.args[i + 1], types.intp)
            return builder.bitcast(builder.gep(data, [offset]), _F32V.as_pointer())
        builder.store(builder.load(vector(2), align=4), vector(0), align=4)
        return context.get_dummy_value()

    return sig, codegen
