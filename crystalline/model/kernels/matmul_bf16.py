"""The linear layer of matmul.py with bf16 operands and float32 accumulation (precision="bf16").

    matmul_forward_bf16(out, inp, wt_panels, bias, N, C, OC, a_buf, tile)
    matmul_backward_bf16(dinp, dweight, dbias, dout, inp, w_panels, N, C, OC, dinp_beta,
                         dweight_beta, a_buf, b_buf, tile)

Same products, shapes and accumulation rules as matmul_forward / matmul_backward (inp (N, C),
weight (OC, C), out (N, OC), float32 in and out), but every product reads bf16 operands:
the weight from panels packed once per step by Node Zero (precision.Bf16Weights: wt_panels
holds weight.T (C, OC) for the forward, w_panels the weight (OC, C) for dinp), the activations
rounded and packed here into the caller's scratch (a_buf, b_buf: uint32; tile: MR * NR float32).
"""

from numba import njit

from crystalline.config import FASTMATH
from crystalline.model.kernels.bf16 import gemm_bf16, pack_panels, pack_rows


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
