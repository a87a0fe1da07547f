"""bfloat16 matrix products on AVX512-BF16 (`vdpbf16ps`), accumulating in float32.

    round_bf16(dst, src, n)                              # dst (uint16) = bf16 bits of src[:n]
    pack_rows(dst, src, s_off, lds, M, K, transposed)    # A operand: (M, Kp) bf16 pairs, rows
    pack_panels(dst, src, s_off, lds, K, N, transposed)  # B operand: NR-column panels of pairs
    gemm_bf16(c, c_off, ldc, a, b, M, N, K, accumulate, tile)
        c (M, N) (+)= A (M, K) @ B (K, N): a from pack_rows, b from pack_panels

`vdpbf16ps acc, x, y` does, for each of its 16 float32 lanes i,
acc[i] += x[2i] * y[2i] + x[2i + 1] * y[2i + 1] on bf16 x, y (each product exact in float32).
So both operands are laid out in K PAIRS: element (m, k) of A sits beside (m, k + 1), and B
holds, for each pair p and column j, the two bf16 values B[2p, j], B[2p + 1, j] side by side.
A pair is one 32-bit word, so packed buffers are uint32 arrays (the low half is the even k):

  * pack_rows:   dst[m * Kp + p]                    = pair(A[m, 2p], A[m, 2p + 1])
  * pack_panels: dst[(j // NR) * Kp * NR + p * NR + j % NR] = pair(B[2p, j], B[2p + 1, j])

Kp = ceil(K / 2) pairs; an odd K's last pair and the columns past N in the last panel hold
zeros, and pack_rows pads M up to a multiple of MR with zero rows, so the register tile always
runs whole; a tile at the edge of c is written to `tile` (MR x NR float32) and copied in part.
`transposed` reads the source as its transpose: A[m, k] = src[s_off + k * lds + m] (rows of
pack_rows from columns of src), B[k, j] = src[s_off + j * lds + k] (B = W.T from W (N, K)).

float32 -> bf16 rounds to nearest, ties to even; NaN stays a (quiet) NaN, inf stays inf, and a
finite value past bf16's largest rounds to inf. Summation inside a tile runs in k order, so a
product is bitwise reproducible. The instruction flushes bf16 subnormal inputs and float32
subnormal results to zero (these are below 1.2e-38).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from crystalline.config import FASTMATH
from crystalline.model.kernels.simd import _F32V, LANES, _arg_values, _is_array, _store_tile

MR = 12                    # rows of the register tile (one broadcast A pair each)
NR = 32                    # columns of the register tile: two vectors of 16 float32 lanes
_VECTORS = NR // LANES
_I32V = ir.VectorType(ir.IntType(32), LANES)


class _BFloat(ir.types.Type):
    """LLVM's `bfloat` scalar type (llvmlite's IR builder has none)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


_BF16V = ir.VectorType(_BFloat(), 32)
DPBF16PS = "llvm.x86.avx512bf16.dpbf16ps.512"


# ---------------------------------------------------------------- rounding
@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _bits_of(u):
    """bf16 bits (as uint32 < 2**16) of the float32 whose bits are the uint32 u: round to nearest
    even by adding 0x7fff plus the lowest kept bit, then dropping 16 bits; a NaN keeps its sign and
    top payload and gets the quiet bit."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x0040)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def round_bf16(dst, src, n):
    """dst[:n] (uint16) = bf16 bits of src.flat[:n] (float32), rounded to nearest even."""
    u = src.reshape(-1).view(np.uint32)
    for i in range(n):
        dst[i] = _bits_of(u[i])


# ---------------------------------------------------------------- packing
@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def pack_rows(dst, src, s_off, lds, M, K, transposed):
    """A operand (M, K) from float32 src into dst (uint32, >= ceil(M / MR) * MR * Kp words): row m
    holds the Kp = ceil(K / 2) pairs of A[m, :]; pad rows and an odd K's last half are zero."""
    u = src.reshape(-1).view(np.uint32)
    Kp = (K + 1) // 2
    Mp = (M + MR - 1) // MR * MR
    rs, ks = (1, lds) if transposed else (lds, 1)      # element (m, k) at s_off + m*rs + k*ks
    for m in range(M):
        row, base = m * Kp, s_off + m * rs
        for p in range(K // 2):
            e = base + 2 * p * ks
            dst[row + p] = _bits_of(u[e]) | (_bits_of(u[e + ks]) << np.uint32(16))
        if K % 2:
            dst[row + Kp - 1] = _bits_of(u[base + (K - 1) * ks])
    for i in range(M * Kp, Mp * Kp):
        dst[i] = 0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def pack_panels(dst, src, s_off, lds, K, N, transposed):
    """B operand (K, N) from float32 src into dst (uint32, >= ceil(N / NR) * Kp * NR words): panel
    q holds columns q*NR .. q*NR + NR - 1 as Kp rows of NR pairs; missing columns are zero."""
    u = src.reshape(-1).view(np.uint32)
    Kp = (K + 1) // 2
    panels = (N + NR - 1) // NR
    ks, js = (1, lds) if transposed else (lds, 1)      # element (k, j) at s_off + k*ks + j*js
    for q in range(panels):
        width = min(NR, N - q * NR)
        for p in range(Kp):
            out = (q * Kp + p) * NR
            k = 2 * p
            for jj in range(width):
                e = s_off + k * ks + (q * NR + jj) * js
                lo = _bits_of(u[e])
                hi = _bits_of(u[e + ks]) if k + 1 < K else np.uint32(0)
                dst[out + jj] = lo | (hi << np.uint32(16))
            for jj in range(width, NR):
                dst[out + jj] = 0


# ---------------------------------------------------------------- register tile
@intrinsic
def _tile(typingctx, c, c_off, ldc, a, a_off, b, b_off, Kp, accumulate):
    """c[c_off + r * ldc + j] (+)= sum_p dot2(a[a_off + r * Kp + p], b[b_off + p * NR + j]) for
    r < MR, j < NR: MR x NR float32 accumulators in registers across the Kp pairs.

    Per pair p: load the panel's NR pairs (two vectors of 16 pairs), then for each row r broadcast
    A's pair (r, p) to 16 lanes and issue one vdpbf16ps per vector. After the last pair, add the
    accumulators to c (accumulate) or store them over it."""
    if not (_is_array(c, types.float32) and _is_array(a, types.uint32)
            and _is_array(b, types.uint32)):
        return None
    sig = types.void(c, c_off, ldc, a, a_off, b, b_off, Kp, accumulate)

    def codegen(context, builder, sig, args):
        integer, pointer, const = _arg_values(context, builder, sig, args)
        c_ptr, a_ptr, b_ptr = pointer(0, 1), pointer(3, 4), pointer(5, 6)
        ldc_, kp = integer(2), integer(7)
        dp = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F32V, [_F32V, _BF16V, _BF16V]), DPBF16PS)
        zero = ir.Constant(_F32V, [0.0] * 16)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(_VECTORS)]
               for _ in range(MR)]
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)
        with cgutils.for_range(builder, kp) as loop:
            p = loop.index
            panel_row = builder.gep(b_ptr, [builder.mul(p, const(NR))])
            bv = [builder.bitcast(builder.load(builder.bitcast(
                builder.gep(panel_row, [const(16 * v)]), _I32V.as_pointer()), align=4), _BF16V)
                for v in range(_VECTORS)]
            for r in range(MR):
                pair = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(const(r), kp), p)]),
                                    align=4)
                first = builder.insert_element(ir.Constant(_I32V, ir.Undefined), pair,
                                               ir.Constant(ir.IntType(32), 0))
                av = builder.bitcast(builder.shuffle_vector(first, first, splat_mask), _BF16V)
                for v in range(_VECTORS):
                    builder.store(builder.call(dp, [builder.load(acc[r][v]), av, bv[v]]), acc[r][v])
        add = context.cast(builder, args[8], sig.args[8], types.boolean)
        _store_tile(builder, acc, c_ptr, ldc_, add, const)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm_bf16(c, c_off, ldc, a, b, M, N, K, accumulate, tile):
    """c.flat[c_off + m * ldc + n] (+)= sum_k A[m, k] B[k, n] for m < M, n < N, with a packed by
    pack_rows (M, K) and b by pack_panels (K, N); tile: MR * NR float32 scratch for the edges."""
    Kp = (K + 1) // 2
    flat = c.reshape(-1)
    for n0 in range(0, N, NR):
        panel = (n0 // NR) * Kp * NR
        width = min(NR, N - n0)
        for m0 in range(0, M, MR):
            rows = min(MR, M - m0)
            if rows == MR and width == NR:
                _tile(c, c_off + m0 * ldc + n0, ldc, a, m0 * Kp, b, panel, Kp, accumulate)
                continue
            _tile(tile, 0, NR, a, m0 * Kp, b, panel, Kp, False)
            for r in range(rows):
                out = c_off + (m0 + r) * ldc + n0
                for j in range(width):
                    flat[out + j] = flat[out + j] + tile[r * NR + j] if accumulate else tile[r * NR + j]
