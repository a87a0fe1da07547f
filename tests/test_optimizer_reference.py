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


def counting_exact_checks(monkeypatch):
    """A list that grows by one each time the optimizer computes the update a second time to
    check it (the slow path its bounds exist to avoid)."""
    import crystalline.engine.optimizer as optimizer
    calls, exact = [], optimizer.adamw_step_is_finite
    monkeypatch.setattr(optimizer, "adamw_step_is_finite", lambda *a: calls.append(1) or exact(*a))
    return calls


def test_ordinary_steps_are_proved_finite_without_a_second_pass(monkeypatch):
    calls = counting_exact_checks(monkeypatch)
    model = GPT(MICRO, seed=0)
    opt = AdamW(model, TrainConfig(grad_clip=1.0))
    rng = np.random.default_rng(1)
    for step in range(20):
        norm, applied = opt.update(rng.normal(0, 10.0 ** (step % 7 - 3), model.params.size)
                                   .astype(np.float32), step, 0.25)
        assert applied
        if step == 10:
            assert opt.m.any() and opt.v.any()    # taking the moments costs one read of their bounds
    assert calls == [] and opt.t == 20 and np.isfinite(model.params).all()


def test_a_step_at_the_edge_of_the_bounds_stays_finite_and_matches_float64(monkeypatch):
    """Parameters at float32's largest, gradient entries up to 1e18 (gradient**2 near 1e37) and
    a step size that moves a parameter by ~5e29: the bounds prove the step finite (no second
    pass) and the result is the float64 reference's, rounded."""
    calls = counting_exact_checks(monkeypatch)
    model = GPT(MICRO, seed=0)
    cfg = TrainConfig(learning_rate=5e-3, weight_decay=0.0, grad_clip=0.0, beta1=0.0, warmup_steps=0)
    opt = AdamW(model, cfg)
    P = model.params.size
    model.params[:] = np.float32(3.4e38) * np.where(np.arange(P) % 2, 1, -1).astype(np.float32)
    grad = np.zeros(P, np.float32)
    grad[:4] = [1e18, -1e18, 3.0, -3.0]
    p0 = model.params.astype(np.float64)
    norm, applied = opt.update(grad, 0)
    assert applied and calls == []
    want_p, want_m, want_v = ref.adamw(p0, grad.astype(np.float64), np.zeros(P), np.zeros(P),
                                       np.zeros(P), 5e-3, 0.0, cfg.beta2, ADAM_EPS, 0.0, 1)
    assert np.isfinite(model.params).all() and np.isfinite(opt.v).all()
    np.testing.assert_allclose(model.params, want_p, rtol=1e-6)
    np.testing.assert_allclose(opt.v, want_v, rtol=1e-6)


def written_moment(model, opt, grad):
    """m[3] = 1e36 written through the array, where v and the gradient are 0: m stays in range
    but lr * m / eps overflows; the bounds must be read from the array, not carried from the
    last step."""
    opt.m[3] = 1e36


def written_negative_moment(model, opt, grad):
    """The same with m[3] = -1e36: the bound is of |m|."""
    opt.m[3] = -1e36


def shift_past_half_an_ulp(model, opt, grad):
    """An undecayed parameter at -float32's max with m = 3.2e25 and no v or gradient there:
    lr / (1 - 0.9**2) * 0.9 m / eps = 1.5e31 passes half an ulp of the maximum (1.01e31), so
    p - shift overflows though m and v stay far in range."""
    i = np.flatnonzero(model.decay_mask == 0)[0]
    grad[i] = 0.0
    opt.m[i], opt.v[i] = 3.2e25, 0.0
    model.params[i] = -np.finfo(np.float32).max


def decay_past_one(model, opt, grad):
    """lr * weight_decay = 1e37 (set past the config's limit of 1): a decayed parameter of 100
    leaves float32's range."""
    object.__setattr__(opt.cfg, "weight_decay", 1e40)
    model.params[np.flatnonzero(model.decay_mask)[0]] = 100.0


def decay_of_one_and_a_half(model, opt, grad):
    """lr * weight_decay = 1.5: decay * p overflows for a decayed parameter at float32's max."""
    object.__setattr__(opt.cfg, "weight_decay", 1500.0)
    model.params[np.flatnonzero(model.decay_mask)[0]] = np.finfo(np.float32).max


def gradient_past_the_moments(model, opt, grad):
    """An entry of 1e20 with clipping off: (1 - beta2) * g * g overflows v."""
    object.__setattr__(opt.cfg, "grad_clip", 0.0)
    grad[5] = 1e20


@pytest.mark.parametrize("overflow", [written_moment, written_negative_moment, shift_past_half_an_ulp,
                                      decay_past_one, decay_of_one_and_a_half,
                                      gradient_past_the_moments])
def test_an_update_the_bounds_cannot_prove_is_checked_and_skipped(overflow):
    model = GPT(MICRO, seed=0)
    opt = AdamW(model, TrainConfig(learning_rate=1e-3, warmup_steps=0))
    grad = np.full(model.params.size, 1e-3, np.float32)
    grad[3] = 0.0
    assert opt.update(grad, 0)[1]
    overflow(model, opt, grad)
    params = model.params.copy()
    m = opt.m.copy()                  # (v is not taken before the update: taking m must suffice)
    norm, applied = opt.update(grad, 1)
    assert not applied and math.isfinite(norm) and opt.t == 1
    assert np.array_equal(model.params, params) and np.array_equal(opt.m, m)
    assert np.isfinite(opt.v).all()
