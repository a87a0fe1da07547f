"""Node Zero's update: learning-rate schedule, gradient clipping and AdamW over the flat buffers.

    opt = AdamW(model, train_cfg)
    norm, applied = opt.update(grad, step, scale)   # grad: (P,) float32; scale * grad is the
                                                    # mean-loss gradient

A step is never applied when its gradient is not finite, nor when the update it would make is
not (a parameter or moment would overflow): the parameters and moments stay as they were,
`update` returns applied=False and the caller records a skipped step. So saved parameters are
always finite.

Proving the update finite costs no pass over the parameters in ordinary training: AdamW keeps
upper bounds of |m| and v, carried from step to step by the update's own formulas applied to
the bounds, with the largest |gradient| bounded by the norm. When the bounds keep every term of
the float32 update far inside float32's range (see `_bounds_after`), no element can overflow; only
when they do not (huge gradients, moments or learning rates) is the update computed once more
without writing (`adamw_step_is_finite`). Parameters are finite on entry: they start finite and
change only by applied steps and by loads that check them.
"""

from __future__ import annotations

import math

import numpy as np

from crystalline.config import TrainConfig
from crystalline.model.kernels.adamw import adamw_step, adamw_step_is_finite, step_constants
from crystalline.model.kernels.clip import grad_norm
from crystalline.model.layout import zeros

ADAM_EPS = 1e-8
SLACK = 1.0 + 2.0 ** -20    # covers the rounding of a few float32 operations and of the norm
FINITE = 1e37               # bounds of |m| and v that float32 holds with room
SHIFT = 1e30                # |lr * m_hat / (sqrt(v_hat) + eps)| below this: p - shift - decay * p
                            # cannot overflow for any finite p (half an ulp of float32's max is 1e31)


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
        self._m = zeros(model.params.size)
        self._v = zeros(model.params.size)
        self._bounds = None     # upper bounds of |m| and v; None: read them from the arrays
        self.t = 0

    @property
    def m(self) -> np.ndarray:
        """First moments (P,). Whoever takes the array may write into it, so the next update
        reads the bounds from the arrays again."""
        self._bounds = None
        return self._m

    @property
    def v(self) -> np.ndarray:
        """Second moments (P,); taking it is treated as for `m`."""
        self._bounds = None
        return self._v

    @property
    def nbytes(self) -> int:
        return self._m.nbytes + self._v.nbytes

    def update(self, grad: np.ndarray, step: int, scale: float = 1.0) -> tuple[float, bool]:
        """One AdamW step at `step`'s learning rate on `scale * grad`, clipped to cfg.grad_clip;
        the model's bf16 weight copy (precision="bf16") follows the parameters.

        The norm is one pass over the gradient; scaling and clipping happen inside AdamW's pass
        (`grad` itself is not modified). Returns (norm of the scaled gradient before clipping,
        whether the update was applied: False when the gradient or the update is not finite).
        """
        unscaled = grad_norm(grad)
        norm = unscaled * scale
        if not math.isfinite(norm):
            return norm, False
        if self.cfg.grad_clip > 0 and norm > self.cfg.grad_clip:
            scale *= self.cfg.grad_clip / norm
        lr = learning_rate(step, self.cfg)
        args = (self.model.params, grad, self._m, self._v, self.model.decay_mask, lr,
                self.cfg.beta1, self.cfg.beta2, ADAM_EPS, self.cfg.weight_decay, self.t + 1, scale)
        bounds = self._bounds_after(unscaled * scale * SLACK, lr, self.t + 1)
        if bounds is None and not adamw_step_is_finite(*args):
            return norm, False
        self.t += 1
        copy = self.model.bf16_params
        adamw_step(*args, copy)         # the bf16 weight copy is written in the same pass ...
        if copy is None:
            self.model.weights_changed()    # ... or packed after it (no-op in fp32)
        self._bounds = bounds           # None after the exact check: read from the arrays next time
        return norm, True

    def _bounds_after(self, g_max: float, lr: float, t: int) -> tuple[float, float] | None:
        """Upper bounds of |m| and v after step t with every |scaled gradient| <= g_max, when they
        prove that step finite; else None. Formed in float64 from the kernel's float32 constants."""
        if self._bounds is None:
            # a NaN or inf in the arrays makes a bound NaN or inf, which proves nothing
            self._bounds = (float(max(self._m.max(), -self._m.min())), float(self._v.max()))
        m_max, v_max = self._bounds
        b1, b2, a1, a2, step, _, eps, decay = (float(c) for c in step_constants(
            lr, self.cfg.beta1, self.cfg.beta2, ADAM_EPS, self.cfg.weight_decay, t))
        m_new = (b1 * m_max + a1 * g_max) * SLACK
        v_new = (b2 * v_max + a2 * g_max * g_max) * SLACK
        shift = step * m_new / eps * SLACK
        if max(m_new, v_new) < FINITE and shift < SHIFT and 0.0 <= decay <= 1.0:
            return m_new, v_new
        return None
