"""Linear layer out = inp @ weight.T + bias via BLAS. inp: (N, C), weight: (OC, C) nn.Linear order,
bias: (OC,) or empty (no bias, e.g. the tied LM head), out: (N, OC). N = B * T folds the batch
into the GEMM M dimension, so every projection is one large product."""

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.blas import N_, T_, gemm


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_forward(out, inp, weight, bias, N, C, OC):
    if bias.shape[0] == 0:
        gemm(N_, T_, N, OC, C, 1.0, inp, 0, C, weight, 0, C, 0.0, out, 0, OC)
        return
    for n in range(N):
        for o in range(OC):
            out[n, o] = bias[o]
    gemm(N_, T_, N, OC, C, 1.0, inp, 0, C, weight, 0, C, 1.0, out, 0, OC)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, dinp_beta=1.0,
                    dweight_beta=1.0):
    """Accumulate dinp += dout @ weight, dweight += dout.T @ inp, dbias += column sums of dout.
    dinp_beta = 0.0 overwrites dinp instead (dinp = dout @ weight): the caller's scratch then
    needs no zeroing pass, and BLAS does not read it back. dweight_beta = 0.0 likewise
    overwrites dweight (dbias still accumulates)."""
    gemm(N_, N_, N, C, OC, 1.0, dout, 0, OC, weight, 0, C, dinp_beta, dinp, 0, C)
    gemm(T_, N_, OC, C, N, 1.0, dout, 0, OC, inp, 0, C, dweight_beta, dweight, 0, C)
    if dbias.shape[0] != 0:
        for n in range(N):
            for o in range(OC):
                dbias[o] += dout[n, o]
