"""Flat buffers with named views: one allocation, an ordered table of (name, shape, offset).

    layout, size = make_layout(parameter_shapes(cfg))   # [(name, shape, offset)], total floats
    flat = np.zeros(size, np.float32)
    p = views(flat, layout)                              # p["qkvw"]: (L, 3C, C) view into flat

This is llm.c's ParameterTensors idea. Parameters, gradient rows and AdamW moments share one
layout, so an optimizer is one loop over P floats and a worker's gradient is one row.
Every tensor starts at a multiple of ALIGN floats (64 bytes, one AVX-512 register / cache line);
padding floats between tensors are never read by kernels: they stay zero in params and
gradients and carry decay 0.

Dimension names used across the model: B batch, T sequence length, C channels, V vocabulary,
L layers, NH heads, hs = C // NH head size, N = B * T rows (tokens).
"""

from __future__ import annotations

import numpy as np

from crystalline.model.kernels.attention import scratch_floats

ALIGN = 16  # floats: every tensor offset is a multiple of 64 bytes

# Tensors AdamW decays (nanoGPT's rule: every tensor of dim >= 2 per layer, i.e. the embeddings
# and the four weight matrices; never biases or LayerNorm gains/offsets).
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def parameter_shapes(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2 parameters in order, stacked over layers; weights are (out, in) as in nn.Linear."""
    V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
    return [
        ("wte", (V, C)), ("wpe", (T, C)),
        ("ln1w", (L, C)), ("ln1b", (L, C)),
        ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)), ("attprojb", (L, C)),
        ("ln2w", (L, C)), ("ln2b", (L, C)),
        ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
        ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
        ("lnfw", (C,)), ("lnfb", (C,)),
    ]


def activation_shapes(cfg, B: int, T: int) -> list[tuple[str, tuple[int, ...]]]:
    """Everything one forward/backward of B sequences of length T keeps (llm.c ActivationTensors)
    plus the backward scratch. Per-layer tensors are (L, N, ...) so a smaller batch uses a prefix."""
    V, L, C, NH = cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head
    N = B * T
    return [
        ("encoded", (N, C)),
        ("ln1", (L, N, C)), ("ln1_mean", (L, N)), ("ln1_rstd", (L, N)),
        ("qkv", (L, N, 3 * C)),
        ("atty", (L, N, C)),
        ("lse", (L, B * NH * T)),                # attention rows' log-sum-exp (B, NH, T)
        ("residual2", (L, N, C)),
        ("ln2", (L, N, C)), ("ln2_mean", (L, N)), ("ln2_rstd", (L, N)),
        ("fch", (L, N, 4 * C)),                   # the MLP's pre-activation
        ("residual3", (L, N, C)),
        ("lnf", (N, C)), ("lnf_mean", (N,)), ("lnf_rstd", (N,)),
        ("logits", (N, V)), ("probs", (N, V)), ("losses", (N,)),
        ("proj", (N, C)),                         # attention / MLP projection before the residual
        ("fch_gelu", (N, 4 * C)),                 # gelu(fch) of one layer (the backward recomputes it)
        # backward scratch, reused by every layer
        ("dresidual", (N, C)), ("dln", (N, C)), ("datty", (N, C)), ("dqkv", (N, 3 * C)),
        ("dfch", (N, 4 * C)), ("dfch_gelu", (N, 4 * C)), ("dlogits", (N, V)),
        ("att_scratch", (scratch_floats(T, C // NH),)),   # one head packed; P, dS row blocks
    ]


def zeros(shape, dtype=np.float32, align: int = 4096) -> np.ndarray:
    """np.zeros(shape, dtype) whose first element sits on an `align`-byte boundary. numpy
    promises 16 bytes (large arrays start 16 bytes past a page); MKL's bf16 products run 20-30%
    slower when their output starts 16 bytes off a cache line (benchmarks/gemm_alignment.py).
    Zero pages stay lazy, as with np.zeros: rows never written cost no memory."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def make_layout(shapes, align: int = ALIGN):
    """[(name, shape, offset)] with every offset a multiple of `align`, and the total size."""
    layout, offset = [], 0
    for name, shape in shapes:
        offset = -(-offset // align) * align
        layout.append((name, tuple(int(s) for s in shape), offset))
        offset += int(np.prod(shape))
    return layout, -(-offset // align) * align


def views(flat: np.ndarray, layout) -> dict[str, np.ndarray]:
    """name -> reshaped view of `flat` at that tensor's offset (no copies)."""
    return {name: flat[off:off + int(np.prod(shape))].reshape(shape) for name, shape, off in layout}
