"""Node Zero's update: learning-rate schedule, gradient clipping and AdamW over the flat buffers.

    opt = AdamW(model, train_cfg)
    norm, applied = opt.update(grad, step, scale)   # grad: (P,) float32; scale * grad is the
                                                    # mean-loss gradient

A step is never applied when its gradient is not finite, nor when the update it would make is
not (a parameter or moment would overflow): the parameters and moments stay as they were,
`update` returns applied=False and the caller records a skipped step. So saved parameters are
always finite. (The update check is one more read pass over P floats on Node Zero.)
"""

from __future__ import annotations

import math

import numpy as np

from crystalline.config import TrainConfig
from crystalline.model.kernels.adamw import adamw_step, adamw_step_is_finite
from crystalline.model.kernels.clip import grad_norm

ADAM_EPS = 1e-8


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.learning_rate, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


class AdamW:
    """AdamW moments `m`, `v` (float32, same layout as the parameters) and the update count `t`."""

    def __init__(self, model, cfg: TrainConfig):
        self.model = model
        self.cfg = cfg
        self.m = np.zeros_like(model.params)
        self.v = np.zeros_like(model.params)
        self.t = 0

    @property
    def nbytes(self) -> int:
        return self.m.nbytes + self.v.nbytes

    def update(self, grad: np.ndarray, step: int, scale: float = 1.0) -> tuple[float, bool]:
        """One AdamW step at `step`'s learning rate on `scale * grad`, clipped to cfg.grad_clip.

        The norm is one pass over the gradient; scaling and clipping happen inside AdamW's pass
        (`grad` itself is not modified). Returns (norm of the scaled gradient before clipping,
        whether the update was applied: False when the gradient or the update is not finite).
        """
        norm = grad_norm(grad) * scale
        if not math.isfinite(norm):
            return norm, False
        if self.cfg.grad_clip > 0 and norm > self.cfg.grad_clip:
            scale *= self.cfg.grad_clip / norm
        args = (self.model.params, grad, self.m, self.v, self.model.decay_mask,
                learning_rate(step, self.cfg), self.cfg.beta1, self.cfg.beta2, ADAM_EPS,
                self.cfg.weight_decay, self.t + 1, scale)
        if not adamw_step_is_finite(*args):
            return norm, False
        self.t += 1
        adamw_step(*args)
        return norm, True
