"""Row-major single-precision GEMM callable from nogil Numba kernels, with no temporaries.

    gemm(transa, transb, M, N, K, alpha, A, a_off, lda, B, b_off, ldb, beta, Cm, c_off, ldc)

computes Cm[c_off:] (M, N, row stride ldc) = alpha * op(A) @ op(B) + beta * Cm, where A, B, Cm are
C-contiguous float32 arrays of any rank addressed by an element offset and a row stride (so a
head's q/k/v columns inside qkv (B, T, 3C) are used in place), op(X) = X or X.T ('N' / 'T').
beta = 1 accumulates, which is how every backward product adds into its gradient buffer.

It calls the same BLAS sgemm that numba's own np.dot uses (numba's helper `numba_xxgemm`, which
looks up scipy.linalg.cython_blas once), linked by symbol name, so kernels using it stay
cacheable (cache=True) and release the GIL. Row-major C = op(A) op(B) is column-major
C.T = op(B).T op(A).T, hence the swapped arguments below.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from crystalline.config import FASTMATH

ensure_blas()

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.CPointer(types.float32), types.CPointer(types.float32), types.intp,
    types.CPointer(types.float32), types.intp, types.CPointer(types.float32),
    types.CPointer(types.float32), types.intp))

N_ = 78  # ord('N')
T_ = 84  # ord('T')


@intrinsic
def _ptr(typingctx, arr, offset):
    """Pointer to element `offset` of the flat data of a contiguous float32 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.gep(ary.data, [off])
    return types.CPointer(types.float32)(arr, offset), codegen


@intrinsic
def _slot(typingctx, value):
    """Pointer to a stack slot holding float32(value) (BLAS takes alpha and beta by reference)."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return cgutils.alloca_once_value(builder, v)
    return types.CPointer(types.float32)(value), codegen


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm(transa, transb, M, N, K, alpha, A, a_off, lda, B, b_off, ldb, beta, Cm, c_off, ldc):
    """Row-major Cm (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * Cm. trans: N_ or T_."""
    if M == 0 or N == 0:
        return
    _xxgemm(115, transb, transa, N, M, K, _slot(alpha), _ptr(B, b_off), ldb,
            _ptr(A, a_off), lda, _slot(beta), _ptr(Cm, c_off), ldc)
