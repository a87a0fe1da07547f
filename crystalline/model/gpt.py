"""GPT-2-style decoder trained through hand-written Numba kernels over flat float32 buffers.

    from crystalline.model.gpt import GPT
    model = GPT(cfg, seed=0)                       # cfg: crystalline.config.ModelConfig
    loss = model.forward(idx, targets)             # (B, T) int arrays -> mean loss (float)
    grads = model.backward()                       # flat float32, same layout as model.params

The engine's path allocates nothing per step and is safe to call from many threads at once on
distinct workspaces and gradient rows against the same read-only parameters:

    ws = model.workspace(max_batch)                # all activations, allocated once
    loss = model.forward_into(ws, idx, targets, params)
    model.backward_into(ws, grad_row, dloss)       # grad_row += dloss * d(sum of token losses)
    model.backward_into(ws, grad_row, dloss, accumulate=False)    # grad_row = ... (no zeroing)
    loss = model.forward_into(ws, idx, targets, dropout=DropoutKey(seed, step, first))  # training

Dropout (cfg.dropout > 0) acts only in a forward given a DropoutKey (see model/dropout.py): on the
embeddings, the attention probabilities and the two residual branches, as in nanoGPT.

The gradient is a plain sum over tokens (no batch statistic anywhere), so gradients of slices of a
batch, summed and divided by the token count, equal the full batch's gradient.
Dimension names: B, T, C, V, L, NH, hs = C // NH, N = B * T (see layout.py).
"""

from __future__ import annotations

import math

import numpy as np

from crystalline.errors import ConfigError
from crystalline.model.dropout import DropoutKey, attention_dropout, drop_rows
from crystalline.model.kernels.attention import attention_backward, attention_forward
from crystalline.model.kernels.crossentropy import crossentropy_backward, crossentropy_forward
from crystalline.model.kernels.dropout_rng import SITE_ATTN_OUT, SITE_EMBEDDING, SITE_MLP_OUT
from crystalline.model.kernels.encoder import encoder_backward, encoder_forward
from crystalline.model.kernels.gelu import (gelu_backward_from_grad, gelu_forward,
                                            gelu_forward_and_grad)
from crystalline.model.kernels.layernorm import layernorm_backward, layernorm_forward
from crystalline.model.kernels.matmul import matmul_backward, matmul_forward
from crystalline.model.kernels.residual import residual_forward
from crystalline.model.layout import (DECAYED, activation_shapes, make_layout, parameter_shapes,
                                      views, zeros)
from crystalline.model.precision import (Bf16Matmuls, Bf16Scratch, Bf16Weights, check_precision,
                                         gemm_provider)

_NO_BIAS = np.zeros(0, np.float32)
# Gradients the backward writes whole with one BLAS product (beta = 0 when not accumulating);
# every other gradient tensor is added into, so it is zeroed first.
_GEMM_WRITTEN = {"wte", "qkvw", "attprojw", "fcw", "fcprojw"}
_PER_LAYER = {"ln1", "ln1_mean", "ln1_rstd", "qkv", "atty", "residual2", "ln2", "ln2_mean",
              "ln2_rstd", "fch", "residual3"}


class Workspace:
    """One worker's activations and backward scratch for up to `max_batch` sequences of `seq_len`
    tokens: a single float32 allocation with named views (see layout.activation_shapes)."""

    def __init__(self, cfg, max_batch: int, seq_len: int):
        self.max_batch, self.seq_len = max_batch, seq_len
        self.layout, size = make_layout(activation_shapes(cfg, max_batch, seq_len))
        self.buffer = zeros(size)
        self.a = views(self.buffer, self.layout)
        self.nbytes = self.buffer.nbytes
        self._shaped = {}          # (B, T) -> dict of views for that batch shape
        self.state = None          # (params, idx, targets, B, T) of the last forward_into
        self.dropout = None        # its DropoutKey while dropout acts, else None

    def shaped(self, cfg, B: int, T: int) -> dict:
        """Views of the first B sequences at length T (cached per shape)."""
        key = (B, T)
        if key not in self._shaped:
            a, N, L, NH = self.a, B * T, cfg.n_layer, cfg.n_head
            s = {name: (arr[:, :N] if name in _PER_LAYER else arr[:N]) for name, arr in a.items()}
            # per layer: a contiguous prefix reshaped (reshaping the (L, :) slice would copy)
            s["lse"] = [a["lse"][l, :B * NH * T].reshape(B, NH, T) for l in range(L)]
            s["att_scratch"] = a["att_scratch"]
            self._shaped[key] = s
        return self._shaped[key]


class GPT:
    """GPT-2: token + position embeddings, L pre-LN blocks (causal attention, 4x GELU MLP), final
    LayerNorm, LM head tied to wte, next-token cross-entropy. Parameters: one flat float32 array."""

    def __init__(self, cfg, seed: int = 0, precision: str = "fp32"):
        self.config = cfg
        self.precision = check_precision(precision)   # "bf16": see crystalline.model.precision
        self.layout, size = make_layout(parameter_shapes(cfg))
        self.num_parameters = sum(int(np.prod(shape)) for _, shape, _ in self.layout)
        self.params = zeros(size)
        self.decay_mask = zeros(size)
        self._init_weights(seed)
        masks = self.param_views(self.decay_mask)
        for name in DECAYED:
            masks[name][...] = 1.0
        self._ws = None
        self._added_into = [(off, int(np.prod(shape))) for name, shape, off in self.layout
                            if name not in _GEMM_WRITTEN]
        self.bf16_weights = Bf16Weights(self, gemm_provider()) if precision == "bf16" else None

    def _init_weights(self, seed):
        rng = np.random.default_rng(seed)
        p = self.param_views()
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, shape, _ in self.layout:
            if name in ("ln1w", "ln2w", "lnfw"):
                p[name][...] = 1.0
            elif name in DECAYED:
                std = proj_std if name in ("attprojw", "fcprojw") else 0.02
                p[name][...] = rng.normal(0.0, std, shape)
            # biases and LayerNorm offsets stay 0

    def param_views(self, array=None) -> dict[str, np.ndarray]:
        """name -> view into model.params, or into any flat array with the same layout."""
        return views(self.params if array is None else array, self.layout)

    # ---- the engine's allocation-free path ----------------------------------------------------

    def workspace(self, max_batch: int, seq_len: int | None = None) -> Workspace:
        T = self.config.block_size if seq_len is None else int(seq_len)
        if not 0 < T <= self.config.block_size:
            raise ConfigError(f"workspace seq_len = {T} must be in 1..block_size = "
                              f"{self.config.block_size}")
        if int(max_batch) <= 0:
            raise ConfigError(f"workspace max_batch = {max_batch} must be a positive integer")
        ws = Workspace(self.config, int(max_batch), T)
        if self.precision == "bf16":
            ws.bf16 = Bf16Scratch(self.config, int(max_batch), T, self.bf16_weights.provider)
            ws.nbytes += ws.bf16.nbytes
        return ws

    @property
    def bf16_nbytes(self) -> int:
        """Bytes of the bf16 weight copy (0 in fp32)."""
        return 0 if self.bf16_weights is None else self.bf16_weights.nbytes

    @property
    def bf16_params(self) -> np.ndarray | None:
        """The bf16 weight copy where it is params element for element ((P,) uint16 bits: the
        MKL GEMM's), which AdamW refreshes in its own pass; else None."""
        w = self.bf16_weights
        return w.buffer if w is not None and w.provider == "mkl" else None

    def weights_changed(self) -> None:
        """Refresh the bf16 weight copy from params (precision="bf16"; AdamW's update does it once
        per step, and whoever else writes model.params must too)."""
        if self.bf16_weights is not None:
            self.bf16_weights.refresh(self.params)

    def _matmuls(self, ws, params):
        """(forward, backward) linear-layer kernels of this precision, one signature for both."""
        if self.precision == "fp32":
            return matmul_forward, matmul_backward
        if params is not self.params:
            raise ConfigError("precision='bf16' reads the bf16 copy of model.params; pass "
                              "params=None, or copy the values into model.params and call "
                              "model.weights_changed()")
        mm = Bf16Matmuls(self.bf16_weights, ws.bf16)
        return mm.forward, mm.backward

    def _check_tokens(self, what, x, ws):
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ConfigError(f"{what} must be a 2-D numpy integer array (B, T), got "
                              f"{type(x).__name__} with shape {getattr(x, 'shape', None)}")
        if x.dtype.kind not in "iu":
            raise ConfigError(f"{what} must have an integer dtype, got {x.dtype}; "
                              "pass token ids, e.g. x.astype(np.int32)")
        B, T = x.shape
        if B == 0 or T == 0:
            raise ConfigError(f"{what} is empty (shape {x.shape}); pass at least one token")
        if T > self.config.block_size:
            raise ConfigError(f"{what} has T = {T} tokens per sequence but block_size = "
                              f"{self.config.block_size}; crop the context")
        if B > ws.max_batch or T > ws.seq_len:
            raise ConfigError(f"{what} shape {x.shape} exceeds the workspace (max_batch = "
                              f"{ws.max_batch}, seq_len = {ws.seq_len}); make a larger workspace")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ConfigError(f"{what} holds token id {lo if lo < 0 else hi} outside "
                              f"0..vocab_size-1 = {self.config.vocab_size - 1}")
        return np.ascontiguousarray(x)

    def forward_into(self, ws: Workspace, idx, targets=None, params=None,
                     dropout: DropoutKey | None = None):
        """Run the forward on ws; return the mean token loss (None without targets). dropout:
        the training step's DropoutKey (None: no dropout, as in evaluation and sampling)."""
        cfg = self.config
        params = self.params if params is None else params
        if params.dtype != np.float32 or params.shape != self.params.shape:
            raise ConfigError(f"params must be float32 of shape {self.params.shape}, got "
                              f"{params.dtype} {params.shape}")
        idx = self._check_tokens("idx", idx, ws)
        if targets is not None:
            targets = self._check_tokens("targets", targets, ws)
            if targets.shape != idx.shape:
                raise ConfigError(f"targets shape {targets.shape} must equal idx shape {idx.shape}")
        B, T = idx.shape
        C, L, NH, V, N = cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size, B * T
        p, a = self.param_views(params), ws.shaped(cfg, B, T)
        matmul_forward, _ = self._matmuls(ws, params)
        if dropout is not None and not isinstance(dropout, DropoutKey):
            raise ConfigError(f"dropout must be a DropoutKey or None, got {type(dropout).__name__}")
        key = ws.dropout = dropout if cfg.dropout > 0 else None
        att_drop = attention_dropout(key, cfg.dropout)
        encoder_forward(a["encoded"], idx, p["wte"], p["wpe"], B, T, C)
        if key:
            drop_rows(a["encoded"], a["encoded"], key, cfg.dropout, 0, SITE_EMBEDDING, B)
        for l in range(L):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            layernorm_forward(a["ln1"][l], a["ln1_mean"][l], a["ln1_rstd"][l], residual,
                              p["ln1w"][l], p["ln1b"][l], N, C)
            matmul_forward(a["qkv"][l], a["ln1"][l], p["qkvw"][l], p["qkvb"][l], N, C, 3 * C)
            attention_forward(a["atty"][l], a["lse"][l], a["qkv"][l], B, T, C, NH,
                              a["att_scratch"], *att_drop, l)
            matmul_forward(a["proj"], a["atty"][l], p["attprojw"][l], p["attprojb"][l], N, C, C)
            if key:
                drop_rows(a["proj"], a["proj"], key, cfg.dropout, l, SITE_ATTN_OUT, B)
            residual_forward(a["residual2"][l].reshape(-1), residual.reshape(-1),
                             a["proj"].reshape(-1), N * C)
            layernorm_forward(a["ln2"][l], a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l],
                              p["ln2w"][l], p["ln2b"][l], N, C)
            matmul_forward(a["fch"][l], a["ln2"][l], p["fcw"][l], p["fcb"][l], N, C, 4 * C)
            # gelu(fch) is not kept per layer (a quarter of the activations): the backward
            # recomputes it from fch
            gelu_forward(a["fch_gelu"].reshape(-1), a["fch"][l].reshape(-1), N * 4 * C)
            matmul_forward(a["proj"], a["fch_gelu"], p["fcprojw"][l], p["fcprojb"][l],
                           N, 4 * C, C)
            if key:
                drop_rows(a["proj"], a["proj"], key, cfg.dropout, l, SITE_MLP_OUT, B)
            residual_forward(a["residual3"][l].reshape(-1), a["residual2"][l].reshape(-1),
                             a["proj"].reshape(-1), N * C)
        layernorm_forward(a["lnf"], a["lnf_mean"], a["lnf_rstd"], a["residual3"][L - 1],
                          p["lnfw"], p["lnfb"], N, C)
        matmul_forward(a["logits"], a["lnf"], p["wte"], _NO_BIAS, N, C, V)
        ws.state = (params, idx, targets, B, T)
        if targets is None:
            return None
        total = crossentropy_forward(a["probs"], a["losses"], a["logits"], targets.reshape(-1), N, V)
        return total / N

    def backward_into(self, ws: Workspace, grad_row, dloss: float = 1.0,
                      accumulate: bool = True) -> None:
        """grad_row += dloss * gradient of the SUM of token losses of ws's last forward_into.

        accumulate=False overwrites grad_row instead (no zeroing pass over the large weight
        gradients, which BLAS then never reads back); the layout's padding floats are left as
        they are."""
        if ws.state is None or ws.state[2] is None:
            raise ConfigError("backward_into needs a forward_into with targets on this workspace first")
        if (not isinstance(grad_row, np.ndarray) or grad_row.dtype != np.float32
                or grad_row.shape != self.params.shape or not grad_row.flags.c_contiguous):
            raise ConfigError(f"grad_row must be a contiguous float32 array of shape "
                              f"{self.params.shape}")
        cfg = self.config
        params, idx, targets, B, T = ws.state
        C, L, NH, V, N = cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size, B * T
        key = ws.dropout
        att_drop = attention_dropout(key, cfg.dropout)
        p, g, a = self.param_views(params), self.param_views(grad_row), ws.shaped(cfg, B, T)
        _, matmul_backward = self._matmuls(ws, params)
        dres, dln, datty, dqkv, dfch, dfg = (a["dresidual"], a["dln"], a["datty"], a["dqkv"],
                                             a["dfch"], a["dfch_gelu"])
        if not accumulate:
            for offset, size in self._added_into:
                grad_row[offset:offset + size] = 0.0
        wb = 1.0 if accumulate else 0.0       # beta of every weight-gradient product
        a["dlogits"].fill(0.0)
        crossentropy_backward(a["dlogits"], a["probs"], targets.reshape(-1), float(dloss), N, V)
        matmul_backward(dln, g["wte"], _NO_BIAS, a["dlogits"], a["lnf"], p["wte"], N, C, V, 0.0, wb)
        dres.fill(0.0)
        layernorm_backward(dres, g["lnfw"], g["lnfb"], dln, a["residual3"][L - 1], p["lnfw"],
                           a["lnf_mean"], a["lnf_rstd"], N, C)
        for l in range(L - 1, -1, -1):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            # dres holds d residual3[l]; the MLP branch adds into it, making it d residual2[l]
            # dinp_beta = 0.0: the scratch dinp is overwritten, not accumulated (no zeroing)
            # (with dropout, the branch's gradient is dres through its mask, in the free dln)
            dbranch = self._undrop(dln, dres, key, l, SITE_MLP_OUT, B)
            # gelu(fch) again, and gelu'(fch) into dfch: one tanh serves both
            gelu_forward_and_grad(a["fch_gelu"].reshape(-1), dfch.reshape(-1),
                                  a["fch"][l].reshape(-1), N * 4 * C)
            matmul_backward(dfg, g["fcprojw"][l], g["fcprojb"][l], dbranch, a["fch_gelu"],
                            p["fcprojw"][l], N, 4 * C, C, 0.0, wb)
            gelu_backward_from_grad(dfch.reshape(-1), dfch.reshape(-1), dfg.reshape(-1), N * 4 * C)
            matmul_backward(dln, g["fcw"][l], g["fcb"][l], dfch, a["ln2"][l], p["fcw"][l],
                            N, C, 4 * C, 0.0, wb)
            layernorm_backward(dres, g["ln2w"][l], g["ln2b"][l], dln, a["residual2"][l],
                               p["ln2w"][l], a["ln2_mean"][l], a["ln2_rstd"][l], N, C)
            # the attention branch adds into it, making it d residual3[l - 1]
            dbranch = self._undrop(dln, dres, key, l, SITE_ATTN_OUT, B)
            matmul_backward(datty, g["attprojw"][l], g["attprojb"][l], dbranch, a["atty"][l],
                            p["attprojw"][l], N, C, C, 0.0, wb)
            attention_backward(dqkv, datty, a["qkv"][l], a["atty"][l], a["lse"][l], B, T, C,
                               NH, False, a["att_scratch"], *att_drop, l)
            matmul_backward(dln, g["qkvw"][l], g["qkvb"][l], dqkv, a["ln1"][l], p["qkvw"][l],
                            N, C, 3 * C, 0.0, wb)
            layernorm_backward(dres, g["ln1w"][l], g["ln1b"][l], dln, residual, p["ln1w"][l],
                               a["ln1_mean"][l], a["ln1_rstd"][l], N, C)
        encoder_backward(g["wte"], g["wpe"], self._undrop(dres, dres, key, 0, SITE_EMBEDDING, B),
                         idx, B, T, C)

    def _undrop(self, out, dout, key, layer, site, B):
        """The gradient before a dropout site: dout through the site's mask, written to out;
        dout itself when no dropout acts."""
        if not key:
            return dout
        drop_rows(out, dout, key, self.config.dropout, layer, site, B)
        return out

    # ---- the simple API -----------------------------------------------------------------------

    def forward(self, idx, targets=None, dropout: DropoutKey | None = None):
        """Mean loss of (B, T) idx against targets (None without targets); sets model.logits.
        dropout: a DropoutKey to train with dropout (None: none, as in evaluation)."""
        if not isinstance(idx, np.ndarray) or idx.ndim != 2:
            raise ConfigError(f"idx must be a 2-D numpy integer array (B, T), got "
                              f"{type(idx).__name__} with shape {getattr(idx, 'shape', None)}")
        if self._ws is None or self._ws.max_batch < idx.shape[0]:
            self._ws = self.workspace(max(1, idx.shape[0]))
        return self.forward_into(self._ws, idx, targets, dropout=dropout)

    @property
    def logits(self) -> np.ndarray:
        """(B, T, V) logits of the last forward() (a view into its workspace)."""
        if self._ws is None or self._ws.state is None:
            raise ConfigError("no forward has run yet: call model.forward(idx) first")
        _, _, _, B, T = self._ws.state
        return self._ws.shaped(self.config, B, T)["logits"].reshape(B, T, self.config.vocab_size)

    def backward(self) -> np.ndarray:
        """Gradient of the last forward()'s mean loss, flat, same layout as params."""
        if self._ws is None or self._ws.state is None:
            raise ConfigError("no forward has run yet: call model.forward(idx, targets) first")
        _, _, _, B, T = self._ws.state
        grads = zeros(self.params.size)
        self.backward_into(self._ws, grads, 1.0 / (B * T))
        return grads

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None,
                 seed: int = 0, cache: bool = True) -> np.ndarray:
        """Sample max_new_tokens after idx (B, T0), cropping the context to block_size; cache=True
        keeps keys and values per layer (see crystalline.model.sample)."""
        from crystalline.model.sample import generate
        return generate(self, idx, max_new_tokens, temperature, top_k, seed, cache)
