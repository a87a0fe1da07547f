"""MKL's bf16 GEMM (cblas_gemm_bf16bf16f32), callable from nogil Numba kernels like blas.gemm.

    gemm16(transa, transb, M, N, K, A16, a_off, lda, B16, b_off, ldb, beta, Cm, c_off, ldc)

Row-major Cm (float32, M x N) = op(A16) @ op(B16) + beta * Cm, where A16 and B16 are uint16
arrays of bf16 bits addressed by element offset and row stride, op = N_ / T_ as in blas.py.
MKL accumulates in float32; on CPUs with AMX-BF16 it runs the tile unit, otherwise AVX512-BF16.

The library is optional (`pip install "crystalline[bf16]"`, i.e. the `mkl` wheel, or
CRYSTALLINE_MKL_RT=/path/to/libmkl_rt.so.2). PATH is where it was found, or None; then no
kernel here may be called (they link against it). MKL runs sequentially (one thread per call):
parallelism comes from the spheres.
"""

import ctypes
import os
import sys

from llvmlite import binding
from numba import njit, types
from numba.extending import intrinsic

from crystalline.config import FASTMATH

ROW_MAJOR = 101
_U16P = types.CPointer(types.uint16)
_F32P = types.CPointer(types.float32)
_MKL_SEQUENTIAL = 1
_GEMM = types.void(types.intc, types.intc, types.intc, types.intc, types.intc, types.intc,
                   types.float32, _U16P, types.intc, _U16P, types.intc, types.float32, _F32P,
                   types.intc)


def _find() -> str | None:
    for path in (os.environ.get("CRYSTALLINE_MKL_RT", ""),
                 os.path.join(sys.prefix, "lib", "libmkl_rt.so.2")):
        if path and os.path.exists(path):
            return path
    return None


def _bind(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL)
        address = ctypes.cast(lib.cblas_gemm_bf16bf16f32, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    _bind.keep = lib
    binding.add_symbol("crystalline_gemm_bf16bf16f32", address)
    return path


@intrinsic
def _ptr(typingctx, arr, offset):
    """Pointer to element `offset` of the flat data of a C-contiguous array."""
    if not (isinstance(arr, types.Array) and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
    return types.CPointer(arr.dtype)(arr, offset), codegen


PATH = _bind(_find())
_gemm = types.ExternalFunction("crystalline_gemm_bf16bf16f32", _GEMM)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm16(transa, transb, M, N, K, A16, a_off, lda, B16, b_off, ldb, beta, Cm, c_off, ldc):
    """Row-major Cm (M, N) = op(A16) (M, K) @ op(B16) (K, N) + beta * Cm (trans: N_ or T_)."""
    if M == 0 or N == 0:
        return
    _gemm(ROW_MAJOR, transa, transb, M, N, K, 1.0, _ptr(A16, a_off), lda, _ptr(B16, b_off), ldb,
          beta, _ptr(Cm, c_off), ldc)
