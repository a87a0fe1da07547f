"""Node Zero's optimizer against references written in the tests: the warm-up + cosine schedule
(reference.warmup_cosine) and one clipped AdamW update in float64 (reference.adamw), for clipping
active, inactive and disabled, the default scale, and a non-finite gradient."""

import math

import numpy as np
import pytest

import reference as ref
from crystalline.config import ModelConfig, TrainConfig
from crystalline.engine.optimizer import ADAM_EPS, AdamW, learning_rate
from crystalline.model.gpt import GPT

MICRO = ModelConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8)


def test_the_schedule_written_here():
    assert ref.warmup_cosine(0, 1.0, 0.1, 4, 12) == 0.25
    assert ref.warmup_cosine(3, 1.0, 0.1, 4, 12) == 1.0
    assert ref.warmup_cosine(4, 1.0, 0.1, 4, 12) == 1.0
    assert ref.warmup_cosine(8, 1.0, 0.1, 4, 12) == pytest.approx(0.55)      # half way: the mean
    assert ref.warmup_cosine(12, 1.0, 0.1, 4, 12) == 0.1
    assert ref.warmup_cosine(40, 1.0, 0.1, 4, 12) == 0.1


@pytest.mark.parametrize("warmup, total", [(0, 10), (1, 10), (4, 12), (10, 200), (5, 6), (7, 7), (9, 3)])
def test_learning_rate_follows_the_schedule_written_here(warmup, total):
    cfg = TrainConfig(learning_rate=3e-3, min_lr=3e-4, warmup_steps=warmup, max_steps=total)
    for step in range(total + 5):
        want = ref.warmup_cosine(step, 3e-3, 3e-4, warmup, total)
        assert learning_rate(step, cfg) == pytest.approx(want, rel=1e-12, abs=1e-18), (step, want)


def reference_update(p, g, m, v, mask, cfg, step, t, scale):
    """Scaled gradient, clipped to cfg.grad_clip (0: off), then PyTorch's AdamW, all in float64."""
    g = g.astype(np.float64) * scale
    norm = float(np.sqrt((g * g).sum()))
    if cfg.grad_clip > 0 and norm > cfg.grad_clip:
        g = g * (cfg.grad_clip / norm)
    lr = ref.warmup_cosine(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    return norm, ref.adamw(p, g, m, v, mask, lr, cfg.beta1, cfg.beta2, ADAM_EPS, cfg.weight_decay, t)


@pytest.mark.parametrize("grad_clip, scale, clipped", [
    (0.5, 1 / 3, True),      # clipping acts (norm > 0.5)
    (1e9, 1 / 3, False),     # a limit far above the norm: no clipping
    (0.0, 1 / 3, False),     # 0 turns clipping off whatever the norm
    (0.5, None, True),       # the default scale is 1
])
def test_adamw_update_matches_the_float64_reference(grad_clip, scale, clipped):
    cfg = TrainConfig(learning_rate=1e-2, min_lr=1e-3, warmup_steps=2, max_steps=6,
                      weight_decay=0.5, grad_clip=grad_clip)
    model = GPT(MICRO, seed=0)
    opt = AdamW(model, cfg)
    rng = np.random.default_rng(0)
    p, m, v = (model.params.astype(np.float64), np.zeros(model.params.size), np.zeros(model.params.size))
    mask = model.decay_mask.astype(np.float64)
    for step in range(4):
        grad = rng.normal(0, 0.1, model.params.size).astype(np.float32)
        norm, applied = opt.update(grad, step) if scale is None else opt.update(grad, step, scale)
        want_norm, (p, m, v) = reference_update(p, grad, m, v, mask, cfg, step, step + 1,
                                                1.0 if scale is None else scale)
        assert applied and opt.t == step + 1
        assert norm == pytest.approx(want_norm, rel=1e-5)
        assert (want_norm > 0.5) == clipped or grad_clip != 0.5
        np.testing.assert_allclose(model.params, p, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(opt.m, m, rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(opt.v, v, rtol=2e-5, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_is_not_applied(bad):
    model = GPT(MICRO, seed=0)
    opt = AdamW(model, TrainConfig())
    grad = np.ones_like(model.params)
    grad[5] = bad
    params = model.params.copy()
    norm, applied = opt.update(grad, 0, 0.5)
    assert not applied and not math.isfinite(norm) and opt.t == 0
    assert np.array_equal(model.params, params) and not opt.m.any() and not opt.v.any()
