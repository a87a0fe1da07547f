"""Deterministic batches: which sequences a step trains on depends on (seed, step) only.

    from crystalline.data.batching import Batches
    batches = Batches(train_tokens, block_size=T, batch_size=B, seed=0)
    batches.offsets(step)                     # (B,) int64 start offsets of the step's sequences
    x, y = batches.sequence(step, i)          # (T,), (T,) int32; y is x shifted by one token
    batches.fill(step, start, count, x_buf, y_buf)   # rows 0..count-1 of (>=count, T) buffers

A worker that owns sequences start..start+count-1 of a step calls `fill` into its own buffers
(no allocation, the gather releases the GIL); however the B sequences are split over workers,
the global batch is the same, because the offsets come from `np.random.default_rng([seed,
step])` alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from crystalline.errors import ConfigError, DataError


@njit(nogil=True, cache=True)
def gather_sequences(x_out, y_out, tokens, offsets, start, count, T):
    """x_out[r] = tokens[o : o+T], y_out[r] = tokens[o+1 : o+T+1], o = offsets[start + r].

    x_out, y_out: (>=count, T) int32; tokens: (n,) int32; offsets: (B,) int64.
    """
    for r in range(count):
        o = offsets[start + r]
        for t in range(T):
            x_out[r, t] = tokens[o + t]
            y_out[r, t] = tokens[o + t + 1]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{name} = {value!r} is invalid: use a positive integer")
    return int(value)


class Batches:
    """Sequences of `block_size` + 1 tokens drawn uniformly from `tokens`, per (seed, step)."""

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int = 0):
        tokens = np.asarray(tokens)   # a memmap stays a (read-only) view, not a copy
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise DataError(f"tokens must be a 1-D integer array, got shape {tokens.shape} "
                            f"dtype {tokens.dtype}; pass corpus.tokens or a split of it")
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)   # (n,)
        self.block_size = _positive_int(block_size, "block_size")
        self.batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed = {seed!r} is invalid: use a non-negative integer")
        self.seed = int(seed)
        n, T = len(self.tokens), self.block_size
        if n < T + 1:
            raise DataError(f"the corpus has {n} tokens, too few for block_size = {T} (a sequence "
                            f"needs block_size + 1 = {T + 1}); use a smaller block_size or more text")
        self.num_starts = n - T   # offsets 0 .. n-T-1: the target of the last position is in range
        self._last = (-1, np.zeros(0, np.int64))   # (step, offsets): one tuple, swapped atomically

    def _offsets(self, step: int) -> np.ndarray:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ConfigError(f"step = {step!r} is invalid: use a non-negative integer")
        cached_step, cached = self._last
        if cached_step == step:
            return cached
        rng = np.random.default_rng([self.seed, int(step)])
        offsets = rng.integers(0, self.num_starts, size=self.batch_size, dtype=np.int64)   # (B,)
        self._last = (step, offsets)
        return offsets

    def offsets(self, step: int) -> np.ndarray:
        """(B,) int64: where each of the step's sequences starts in `tokens`."""
        return self._offsets(step).copy()

    def sequence(self, step: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence i of the step: x (T,) int32 and y (T,) int32 with y[t] = x[t+1]'s token."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.batch_size:
            raise ConfigError(f"sequence index {i!r} is invalid: use 0 <= i < batch_size = {self.batch_size}")
        o, T = int(self._offsets(step)[i]), self.block_size
        return self.tokens[o:o + T].copy(), self.tokens[o + 1:o + T + 1].copy()

    def fill(self, step: int, start: int, count: int, x_out: np.ndarray, y_out: np.ndarray) -> None:
        """Write sequences start..start+count-1 of the step into rows 0..count-1 of x_out, y_out.

        x_out, y_out: int32 arrays of shape (>=count, T), C-contiguous rows; nothing is allocated.
        """
        B, T = self.batch_size, self.block_size
        if not (isinstance(start, (int, np.integer)) and isinstance(count, (int, np.integer))
                and 0 <= start and 0 <= count and start + count <= B):
            raise ConfigError(f"sequences {start!r}..{start!r}+{count!r} are not within the batch "
                              f"of {B}; use 0 <= start and start + count <= batch_size")
        for name, buf in (("x_out", x_out), ("y_out", y_out)):
            if not isinstance(buf, np.ndarray) or buf.dtype != np.int32 or buf.ndim != 2 \
                    or buf.shape[0] < count or buf.shape[1] != T or not buf.flags.writeable:
                shape = getattr(buf, "shape", None)
                raise ConfigError(f"{name} must be a writable int32 array of shape (>={count}, {T}), "
                                  f"got {type(buf).__name__} shape {shape} dtype {getattr(buf, 'dtype', None)}")
        gather_sequences(x_out, y_out, self.tokens, self._offsets(step), int(start), int(count), T)
