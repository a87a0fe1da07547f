"""Mixed precision: which CPUs run bf16, the bf16 weight copy, and the model's bf16 matmuls.

    check_precision("bf16")            # ConfigError unless this CPU has avx512_bf16
    weights = Bf16Weights(model)       # packed bf16 copies of every matrix weight
    weights.refresh(model.params)      # Node Zero, once per step after AdamW
    mm = Bf16Matmuls(weights, Bf16Scratch(cfg, B, T))
    mm.forward(out, inp, weight, bias, N, C, OC)         # matmul_forward's signature
    mm.backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, dinp_beta, dweight_beta)

precision="bf16" (llm.c's and PyTorch autocast's split): the matrix products of forward and
backward read bf16 copies of the weights and activations and accumulate in float32; master
weights, gradients, AdamW moments, LayerNorm, softmax, GELU, attention and the loss stay
float32. Attention stays float32 because its kernels are being rewritten (the flash-attention
issue) and its products (head size 32 at cllm-4.5m) are a small share of the FLOPs.

The instruction (`vdpbf16ps`, AVX512-BF16) is detected from the CPU features Numba compiles for;
CRYSTALLINE_HIDE_AVX512_BF16=1 in the environment makes it look absent (tests of the error path).

Two GEMMs do the products (gemm_provider()): MKL's cblas_gemm_bf16bf16f32 where MKL is installed
(`pip install "crystalline[bf16]"`; on CPUs with AMX it runs the tile unit, measured 1.9x our
fp32 GEMM at cllm-4.5m's shapes), else our vdpbf16ps register tiles (kernels/bf16.py).
CRYSTALLINE_BF16_GEMM=mkl | vdpbf16ps chooses one. With MKL the weight copy is the parameters in
bf16 (same offsets); with ours, each matrix packed twice as the tiles read it.
"""

from __future__ import annotations

import os

import numpy as np

from crystalline.config import PRECISIONS
from crystalline.errors import ConfigError
from crystalline.model.kernels import mkl_bf16
from crystalline.model.kernels.bf16 import MR, NR, pack_panels, round_bf16
from crystalline.model.kernels.matmul_bf16 import (matmul_backward_bf16, matmul_backward_mkl,
                                                   matmul_forward_bf16, matmul_forward_mkl)
from crystalline.model.layout import zeros

FEATURE = "avx512_bf16"                 # /proc/cpuinfo's name; LLVM calls it avx512bf16
HIDE_ENV = "CRYSTALLINE_HIDE_AVX512_BF16"
MATRIX_WEIGHTS = ("wte", "qkvw", "attprojw", "fcw", "fcprojw")   # (OC, C) or (L, OC, C)
GEMM_PROVIDERS = ("mkl", "vdpbf16ps")
GEMM_ENV = "CRYSTALLINE_BF16_GEMM"


def gemm_provider() -> str:
    """"mkl" where MKL is installed, else "vdpbf16ps"; GEMM_ENV chooses (a ConfigError if MKL
    is asked for but not installed)."""
    chosen = os.environ.get(GEMM_ENV, "")
    if chosen not in ("",) + GEMM_PROVIDERS:
        raise ConfigError(f"{GEMM_ENV}={chosen!r} is not a bf16 GEMM; use one of {list(GEMM_PROVIDERS)}")
    if chosen == "mkl" and mkl_bf16.PATH is None:
        raise ConfigError(f"{GEMM_ENV}=mkl but MKL is not installed; pip install \"crystalline[bf16]\" "
                          "or set CRYSTALLINE_MKL_RT to libmkl_rt.so.2")
    return chosen or ("mkl" if mkl_bf16.PATH is not None else "vdpbf16ps")


def cpu_has_bf16() -> bool:
    """True when Numba's target CPU has AVX512-BF16 (and HIDE_ENV is not set)."""
    if os.environ.get(HIDE_ENV, "") not in ("", "0"):
        return False
    from llvmlite import binding
    from numba.core import config
    if config.CPU_FEATURES is not None:                  # NUMBA_CPU_FEATURES overrides the host's
        return "+avx512bf16" in config.CPU_FEATURES.split(",")
    return bool(binding.get_host_cpu_features().get("avx512bf16", False))


def check_precision(precision) -> str:
    """precision itself, or a ConfigError naming what is wrong and the fix."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is not a precision; use one of {list(PRECISIONS)}")
    if precision == "bf16" and not cpu_has_bf16():
        from llvmlite import binding
        raise ConfigError(f"precision = 'bf16' needs the CPU feature {FEATURE} (the vdpbf16ps "
                          f"instruction), which this CPU ({binding.get_host_cpu_name()}) lacks; "
                          "use precision = 'fp32'")
    return precision


def _packed_words(K: int, N: int) -> int:
    """uint32 words of a B operand (K, N) packed by pack_panels."""
    return (N + NR - 1) // NR * NR * ((K + 1) // 2)


def _rows_words(M: int, K: int) -> int:
    """uint32 words of an A operand (M, K) packed by pack_rows."""
    return (M + MR - 1) // MR * MR * ((K + 1) // 2)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class Bf16Weights:
    """The bf16 weight copy. With MKL: the parameters in bf16 (uint16, same offsets). With our
    tiles: for every matrix weight W (OC, C) of the model (per layer, and wte for the LM head),
    two copies packed as the tiles read them: W.T (C, OC) for the forward and W (OC, C) for the
    input gradient, in one uint32 array (2 bytes per weight per copy)."""

    def __init__(self, model, provider: str):
        self.model, self.provider = model, provider
        if provider == "mkl":
            self.buffer = zeros(model.params.size, np.uint16)
            self.nbytes = self.buffer.nbytes
            self.refresh(model.params)
            return
        p = model.param_views()
        self._slots = {}        # element offset of W in params -> (forward slice, backward slice)
        self._matrices = []     # (offset, OC, C)
        size = 0
        for name in MATRIX_WEIGHTS:
            stack = p[name] if p[name].ndim == 3 else p[name][None]
            for w in stack:
                OC, C = w.shape
                offset = (_address(w) - _address(model.params)) // 4
                fwd, bwd = _packed_words(C, OC), _packed_words(OC, C)
                self._slots[offset] = (slice(size, size + fwd), slice(size + fwd, size + fwd + bwd))
                self._matrices.append((offset, OC, C))
                size += fwd + bwd
        self.buffer = zeros(size, np.uint32)
        self.nbytes = self.buffer.nbytes
        self.refresh(model.params)

    def refresh(self, params: np.ndarray) -> None:
        """Round and pack every matrix weight of `params` (the model's flat float32 parameters)."""
        if self.provider == "mkl":
            round_bf16(self.buffer, params, params.size)
            return
        for offset, OC, C in self._matrices:
            fwd, bwd = self._slots[offset]
            pack_panels(self.buffer[fwd], params, offset, C, C, OC, True)    # B = W.T (C, OC)
            pack_panels(self.buffer[bwd], params, offset, C, OC, C, False)   # B = W   (OC, C)

    def offset(self, weight: np.ndarray) -> int:
        """Element offset of `weight`, a view of model.params, in the parameters."""
        return (_address(weight) - _address(self.model.params)) // 4

    def panels(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) packed copies of `weight` (our tiles)."""
        fwd, bwd = self._slots[self.offset(weight)]
        return self.buffer[fwd], self.buffer[bwd]


class Bf16Scratch:
    """One workspace's packing buffers for up to max_batch sequences of seq_len tokens: the A
    operand of any product (activations, gradients, their transposes) and the B operand of the
    weight gradients (the layer inputs), plus the edge tile."""

    def __init__(self, cfg, max_batch: int, seq_len: int, provider: str):
        N, C, V = max_batch * seq_len, cfg.n_embd, cfg.vocab_size
        outs = (3 * C, C, 4 * C, V)
        if provider == "mkl":             # the layer input and the output gradient in bf16
            self.x16 = zeros(N * 4 * C, np.uint16)
            self.dy16 = zeros(N * max(outs), np.uint16)
            self.nbytes = self.x16.nbytes + self.dy16.nbytes
            return
        a = max([_rows_words(N, K) for K in (C, 4 * C) + outs] + [_rows_words(OC, N) for OC in outs])
        self.a = zeros(a, np.uint32)
        self.b = zeros(max(_packed_words(N, IC) for IC in (C, 4 * C)), np.uint32)
        self.tile = np.zeros(MR * NR, np.float32)
        self.nbytes = self.a.nbytes + self.b.nbytes + self.tile.nbytes


class Bf16Matmuls:
    """matmul_forward / matmul_backward with their signatures, in bf16 (see the module docstring)."""

    def __init__(self, weights: Bf16Weights, scratch: Bf16Scratch):
        self.weights, self.scratch = weights, scratch

    def forward(self, out, inp, weight, bias, N, C, OC):
        s, w = self.scratch, self.weights
        if w.provider == "mkl":
            matmul_forward_mkl(out, inp, w.buffer, w.offset(weight), bias, N, C, OC, s.x16)
            return
        matmul_forward_bf16(out, inp, self.weights.panels(weight)[0], bias, N, C, OC, s.a, s.tile)

    def backward(self, dinp, dweight, dbias, dout, inp, weight, N, C, OC, dinp_beta=1.0,
                 dweight_beta=1.0):
        s, w = self.scratch, self.weights
        if w.provider == "mkl":
            matmul_backward_mkl(dinp, dweight, dbias, dout, inp, w.buffer, w.offset(weight), N, C,
                                OC, dinp_beta, dweight_beta, s.x16, s.dy16)
            return
        matmul_backward_bf16(dinp, dweight, dbias, dout, inp, self.weights.panels(weight)[1], N, C,
                             OC, dinp_beta, dweight_beta, s.a, s.b, s.tile)
