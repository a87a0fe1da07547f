"""Row-major single-precision GEMM callable from nogil Numba kernels, with no temporaries.

    gemm(transa, transb, M, N, K, alpha, A, a_off, lda, B, b_off, ldb, beta, Cm, c_off, ldc)

computes Cm[c_off:] (M, N, row stride ldc) = alpha * op(A) @ op(B) + beta * Cm, where A, B, Cm are
C-contiguous float32 arrays of any rank addressed by an element offset and a row stride (so a
head's q/k/v columns inside qkv (B, T, 3C) are used in place), op(X) = X or X.T ('N' / 'T').
beta = 1 accumulates, which is how every backward product adds into its gradient buffer.

Kernels call the symbol `crystalline_cblas_sgemm` (an ILP64 cblas_sgemm) by name, so they stay
cacheable (cache=True) and release the GIL; this module binds that name at import (PROVIDER):

  * MKL's `cblas_sgemm_64` where MKL is installed (the `bf16` extra, kernels/mkl_bf16.py, run
    sequentially): 4-12% faster than OpenBLAS at the model's shapes on this CPU
    (benchmarks/fp32_ceiling.py measures both); CRYSTALLINE_SGEMM=openblas keeps OpenBLAS;
  * numpy's bundled OpenBLAS (`scipy_cblas_sgemm64_`, numpy >= 2 wheels): its weight-gradient
    products (op(A) = A.T) run 10-15% faster here than those of scipy's older copy;
  * otherwise a shim over the sgemm that numba's own np.dot uses (`numba_xxgemm`, which finds
    scipy.linalg.cython_blas): row-major C = op(A) op(B) is column-major C.T = op(B).T op(A).T.
"""

import ctypes
import os

import numpy  # noqa: F401  (loads numpy's OpenBLAS before threadpool_info looks for it)
from llvmlite import binding
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas
from threadpoolctl import threadpool_info

from crystalline.config import FASTMATH
from crystalline.errors import ConfigError
from crystalline.model.kernels import mkl_bf16

ROW_MAJOR = 101
N_ = 111   # CblasNoTrans
T_ = 112   # CblasTrans
_F32P = types.CPointer(types.float32)
_CBLAS_SGEMM = types.void(types.intc, types.intc, types.intc, types.int64, types.int64,
                          types.int64, types.float32, _F32P, types.int64, _F32P, types.int64,
                          types.float32, _F32P, types.int64)
_ILP64_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")


@intrinsic
def _ptr(typingctx, arr, offset):
    """Pointer to element `offset` of the flat data of a contiguous float32 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.gep(ary.data, [off])
    return _F32P(arr, offset), codegen


@intrinsic
def _slot(typingctx, value):
    """Pointer to a stack slot holding float32(value) (Fortran BLAS takes scalars by reference)."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return cgutils.alloca_once_value(builder, v)
    return _F32P(value), codegen


def _ilp64_openblas_sgemm():
    """(address, description) of an ILP64 cblas_sgemm in a loaded OpenBLAS, or None."""
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for name in _ILP64_NAMES:
            if hasattr(lib, name):
                address = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                return address, f"OpenBLAS {info.get('version')} ({name}, {info['filepath']})"
    return None


def _numba_blas_shim():
    """(address, description) of a cblas_sgemm-shaped shim over numba's numba_xxgemm."""
    xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
        types.char, types.char, types.char, types.intp, types.intp, types.intp,
        _F32P, _F32P, types.intp, _F32P, types.intp, _F32P, _F32P, types.intp))

    @cfunc(_CBLAS_SGEMM, nopython=True)
    def shim(order, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
        ta = 84 if transa == T_ else 78        # 'T' / 'N'
        tb = 84 if transb == T_ else 78
        xxgemm(115, tb, ta, N, M, K, _slot(alpha), B, ldb, A, lda, _slot(beta), C, ldc)

    _numba_blas_shim.keep = shim              # the address lives as long as the cfunc object
    return shim.address, "numba's BLAS (scipy.linalg.cython_blas sgemm, numba_xxgemm)"


def _mkl_sgemm():
    """(address, description) of MKL's ILP64 cblas_sgemm_64, or None without MKL; SGEMM_ENV
    chooses ("mkl", "openblas" or unset: MKL where installed)."""
    chosen = os.environ.get(SGEMM_ENV, "")
    if chosen not in ("", "mkl", "openblas"):
        raise ConfigError(f"{SGEMM_ENV}={chosen!r} is not an sgemm; use 'mkl' or 'openblas'")
    if chosen == "mkl" and mkl_bf16.PATH is None:
        raise ConfigError(f"{SGEMM_ENV}=mkl but MKL is not installed; pip install "
                          "\"crystalline[bf16]\" or set CRYSTALLINE_MKL_RT to libmkl_rt.so.2")
    if chosen == "openblas" or mkl_bf16.PATH is None:
        return None
    address = ctypes.cast(ctypes.CDLL(mkl_bf16.PATH).cblas_sgemm_64, ctypes.c_void_p).value
    return address, f"MKL (cblas_sgemm_64, {mkl_bf16.PATH})"


SGEMM_ENV = "CRYSTALLINE_SGEMM"
ensure_blas()   # numba_xxgemm's lookup: the fallback, and kernels cached before this module changed
_ADDRESS, PROVIDER = _mkl_sgemm() or _ilp64_openblas_sgemm() or _numba_blas_shim()
binding.add_symbol("crystalline_cblas_sgemm", _ADDRESS)
_sgemm = types.ExternalFunction("crystalline_cblas_sgemm", _CBLAS_SGEMM)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm(transa, transb, M, N, K, alpha, A, a_off, lda, B, b_off, ldb, beta, Cm, c_off, ldc):
    """Row-major Cm (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * Cm. trans: N_ or T_."""
    if M == 0 or N == 0:
        return
    _sgemm(ROW_MAJOR, transa, transb, M, N, K, alpha, _ptr(A, a_off), lda, _ptr(B, b_off), ldb,
           beta, _ptr(Cm, c_off), ldc)
