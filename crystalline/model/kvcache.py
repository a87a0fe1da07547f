"""Keys and values cached per layer, so that generating a token runs the model on that token only.

    cache = KVCache(model, batch=B, max_len=T)     # every buffer allocated here, once
    logits = cache.prefill(idx)                    # (B, T0) prompt -> (B, V) next-token logits
    logits = cache.step(tokens)                    # (B,) tokens at position cache.length -> (B, V)

`step` allocates nothing: its activations are one float32 buffer with named views (like the
training Workspace, rows N = B), the keys and values are (L, B, max_len, C) arrays, and it calls
the training kernels with N = B plus kernels/decode.py for the embedding and the attention over
the cache. Positions are absolute (learned position embeddings), so a context that has slid past
block_size must be prefilled again: the sampler does that (see crystalline.model.sample).
"""

from __future__ import annotations

import numpy as np

from crystalline.errors import ConfigError
from crystalline.model.kernels.decode import attention_decode, embed_token
from crystalline.model.kernels.gelu import gelu_forward
from crystalline.model.kernels.layernorm import layernorm_forward
from crystalline.model.kernels.matmul import matmul_forward
from crystalline.model.kernels.residual import residual_forward
from crystalline.model.layout import make_layout, views

_NO_BIAS = np.zeros(0, np.float32)


def step_shapes(cfg, B: int, max_len: int) -> list[tuple[str, tuple[int, ...]]]:
    """The activations of one single-token step of B sequences (rows N = B)."""
    C, V = cfg.n_embd, cfg.vocab_size
    return [("x", (B, C)), ("ln", (B, C)), ("mean", (B,)), ("rstd", (B,)), ("qkv", (B, 3 * C)),
            ("atty", (B, C)), ("proj", (B, C)), ("fch", (B, 4 * C)), ("fch_gelu", (B, 4 * C)),
            ("logits", (B, V)), ("scores", (max_len,))]


class KVCache:
    """Keys and values of up to `max_len` positions for `batch` sequences, with the step's buffers."""

    def __init__(self, model, batch: int, max_len: int):
        cfg = model.config
        if not 0 < max_len <= cfg.block_size:
            raise ConfigError(f"KVCache max_len = {max_len} must be in 1..block_size = {cfg.block_size}")
        self.model, self.batch, self.max_len = model, int(batch), int(max_len)
        L, C = cfg.n_layer, cfg.n_embd
        self.keys = np.zeros((L, self.batch, self.max_len, C), np.float32)     # (L, B, T, C)
        self.values = np.zeros((L, self.batch, self.max_len, C), np.float32)   # (L, B, T, C)
        layout, size = make_layout(step_shapes(cfg, self.batch, self.max_len))
        self.buffer = np.zeros(size, np.float32)
        self.a = views(self.buffer, layout)
        self.flat = {name: arr.reshape(-1) for name, arr in self.a.items()}
        self.params = model.param_views()     # views into model.params (kept in place by loads)
        self.length = 0            # positions cached
        self._ws = None            # the training workspace prefill uses, made on first need

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + self.buffer.nbytes

    def prefill(self, idx: np.ndarray) -> np.ndarray:
        """Run the whole (B, T0) context (T0 <= max_len) and cache its keys and values; returns the
        (B, V) logits after its last token (a view, valid until the next call)."""
        cfg, model = self.model.config, self.model
        B, T = idx.shape
        if B != self.batch or not 0 < T <= self.max_len:
            raise ConfigError(f"prefill of shape {idx.shape} does not fit the cache "
                              f"(batch {self.batch}, max_len {self.max_len})")
        if self._ws is None or self._ws.seq_len < T:
            self._ws = model.workspace(B, T)
        model.forward_into(self._ws, idx)
        C, V = cfg.n_embd, cfg.vocab_size
        a = self._ws.shaped(cfg, B, T)
        for l in range(cfg.n_layer):
            qkv = a["qkv"][l].reshape(B, T, 3 * C)
            self.keys[l, :, :T] = qkv[:, :, C:2 * C]
            self.values[l, :, :T] = qkv[:, :, 2 * C:]
        self.a["logits"][...] = a["logits"].reshape(B, T, V)[:, T - 1]
        self.length = T
        return self.a["logits"]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Run one token per sequence ((B,) int32) at position `length`, caching its key and
        value; returns the (B, V) logits after it (a view, valid until the next call)."""
        cfg, a, f = self.model.config, self.a, self.flat
        pos = self.length
        if pos >= self.max_len:
            raise ConfigError(f"the cache is full ({self.max_len} positions); prefill a cropped context")
        B, C, NH, V = self.batch, cfg.n_embd, cfg.n_head, cfg.vocab_size
        p = self.params
        embed_token(a["x"], tokens, p["wte"], p["wpe"], pos, B, C)
        for l in range(cfg.n_layer):
            layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x"], p["ln1w"][l], p["ln1b"][l], B, C)
            matmul_forward(a["qkv"], a["ln"], p["qkvw"][l], p["qkvb"][l], B, C, 3 * C)
            attention_decode(a["atty"], self.keys[l], self.values[l], a["qkv"], a["scores"], pos,
                             B, C, NH)
            matmul_forward(a["proj"], a["atty"], p["attprojw"][l], p["attprojb"][l], B, C, C)
            residual_forward(f["x"], f["x"], f["proj"], B * C)
            layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x"], p["ln2w"][l], p["ln2b"][l], B, C)
            matmul_forward(a["fch"], a["ln"], p["fcw"][l], p["fcb"][l], B, C, 4 * C)
            gelu_forward(f["fch_gelu"], f["fch"], B * 4 * C)
            matmul_forward(a["proj"], a["fch_gelu"], p["fcprojw"][l], p["fcprojb"][l], B, 4 * C, C)
            residual_forward(f["x"], f["x"], f["proj"], B * C)
        layernorm_forward(a["ln"], a["mean"], a["rstd"], a["x"], p["lnfw"], p["lnfb"], B, C)
        matmul_forward(a["logits"], a["ln"], p["wte"], _NO_BIAS, B, C, V)
        self.length = pos + 1
        return a["logits"]
