"""The linear layer of matmul.py with bf16 operands and float32 accumulation (precision="bf16").

    matmul_forward_bf16(out, inp, wt_panels, bias, N, C, OC, a_buf, tile)
    matmul_backward_bf16(dinp, dweight, dbias, dout, inp, w_panels, N, C, OC, dinp_beta,
                         dweight_beta, a_buf, b_buf, tile)

    matmul_forward_mkl(out, inp, w16, w_off, bias, N, C, OC, x16)        # through MKL, where
    matmul_backward_mkl(dinp, dweight, dbias, dout, inp, w16, w_off, N, C, OC, dinp_beta,
                        dweight_beta, x16, dy16)                         # it is installed

Same products, shapes and accumulation rules as matmul_forward / matmul_backward (inp (N, C),
weight (OC, C), out (N, OC), float32 in and out), but every product reads bf16 operands:
the weight from panels packed once per step by Node Zero (precision.Bf16Weights: wt_panels
holds weight.T (C, OC) for the forward, w_panels the weight (OC, C) for dinp), the activations
rounded and packed here into the caller's scratch (a_buf, b_buf: uint32; tile: MR * NR float32).
"""

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.bf16 import gemm_bf16, pack_panels, pack_rows, round_bf16
from crystalline.model.kernels.blas import N_, T_
from crystalline.model.kernels.mkl_bf16 import gemm16


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_forward_bf16(out, inp, wt_panels, bias, N, C, OC, a_buf, tile):
    """out (N, OC) = bf16(inp) @ bf16(weight).T + bias."""
    pack_rows(a_buf, inp, 0, C, N, C, False)
    if bias.shape[0] == 0:
        gemm_bf16(out, 0, OC, a_buf, wt_panels, N, OC, C, False, tile)
        return
    for n in range(N):
        for o in range(OC):
            out[n, o] = bias[o]
    gemm_bf16(out, 0, OC, a_buf, wt_panels, N, OC, C, True, tile)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_backward_bf16(dinp, dweight, dbias, dout, inp, w_panels, N, C, OC, dinp_beta,
                         dweight_beta, a_buf, b_buf, tile):
    """dinp (+)= bf16(dout) @ bf16(weight); dweight (+)= bf16(dout).T @ bf16(inp); dbias += column
    sums of dout (float32). A beta of 0.0 overwrites, 1.0 accumulates (as matmul_backward)."""
    pack_rows(a_buf, dout, 0, OC, N, OC, False)                    # A = dout     (N, OC)
    gemm_bf16(dinp, 0, C, a_buf, w_panels, N, C, OC, dinp_beta != 0.0, tile)
    pack_rows(a_buf, dout, 0, OC, OC, N, True)                     # A = dout.T   (OC, N)
    pack_panels(b_buf, inp, 0, C, N, C, False)                     # B = inp      (N, C)
    gemm_bf16(dweight, 0, C, a_buf, b_buf, OC, C, N, dweight_beta != 0.0, tile)
    if dbias.shape[0] != 0:
        for n in range(N):
            for o in range(OC):
                dbias[o] += dout[n, o]


# MKL's bf16 GEMM (kernels/mkl_bf16.py, where installed): plain row-major bf16 operands.
@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_forward_mkl(out, inp, w16, w_off, bias, N, C, OC, x16):
    """out (N, OC) = bf16(inp) @ bf16(weight).T + bias; w16: bf16 copy of the parameters, the
    weight (OC, C) at element w_off; x16: uint16 scratch of N * C."""
    round_bf16(x16, inp, N * C)
    beta = 0.0
    if bias.shape[0] != 0:
        beta = 1.0
        for n in range(N):
            for o in range(OC):
                out[n, o] = bias[o]
    gemm16(N_, T_, N, OC, C, x16, 0, C, w16, w_off, C, beta, out, 0, OC)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def matmul_backward_mkl(dinp, dweight, dbias, dout, inp, w16, w_off, N, C, OC, dinp_beta,
                        dweight_beta, x16, dy16):
    """matmul_backward_bf16's products through MKL; x16, dy16: uint16 scratch (N * C, N * OC)."""
    if dbias.shape[0] != 0:
        _round_and_sum_columns(dy16, dout, dbias, N, OC)
    else:
        round_bf16(dy16, dout, N * OC)
    gemm16(N_, N_, N, C, OC, dy16, 0, OC, w16, w_off, C, dinp_beta, dinp, 0, C)
    round_bf16(x16, inp, N * C)
    gemm16(T_, N_, OC, C, N, dy16, 0, OC, x16, 0, C, dweight_beta, dweight, 0, C)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _round_and_sum_columns(dy16, dout, dbias, N, OC):
    """dy16 = bf16 bits of dout (N, OC) and dbias += its column sums (in row order, as
    matmul_backward's), each row read once from memory."""
    for n in range(N):
        round_bf16(dy16[n * OC:(n + 1) * OC], dout[n], OC)
        for o in range(OC):
            dbias[o] += dout[n, o]
