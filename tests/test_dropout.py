"""Dropout: the counter-based mask generator against SplitMix64 written here, the model with
dropout against the float64 reference given the same masks (and finite differences), off in
evaluation and sampling, free at p = 0, and the config's bounds."""

import math

import numpy as np
import pytest

import reference as ref
from crystalline.config import ModelConfig, preset
from crystalline.errors import ConfigError
from crystalline.model.dropout import DropoutKey
from crystalline.model.gpt import GPT
from crystalline.model.kernels.dropout import dropout_forward
from crystalline.model.kernels.dropout_rng import (SITE_ATTENTION, SITE_ATTN_OUT, SITE_EMBEDDING,
                                                   SITE_MLP_OUT, dropout_mask, keep_threshold,
                                                   stream_key)

# ---- SplitMix64, written out here -----------------------------------------------------------

M64 = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def py_key(seed, step, seq, layer, site):
    k = mix((seed + GAMMA) & M64)
    for v in (step, seq, layer, site):
        k = mix(k ^ ((v + GAMMA) & M64))
    return k


def py_keep(key, pos, p):
    """Kept when the hash's 32 high bits, as an integer in [0, 2^32), reach p * 2^32."""
    return (mix(key ^ ((pos * GAMMA) & M64)) >> 32) >= math.floor(p * 2**32)


KEYS = [(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (0, 0, 1, 0, 0), (0, 0, 0, 1, 0),
        (0, 0, 0, 0, 1), (2**63 - 1, 10**12, 2**20, 1023, 3), (12345, 678, 91, 5, 2)]


@pytest.mark.parametrize("k", KEYS)
def test_stream_key_and_mask_match_splitmix64_written_here(k):
    assert int(stream_key(*k)) == py_key(*k)
    for p in (0.1, 0.5, 0.9):
        want = np.array([py_keep(py_key(*k), pos, p) for pos in range(200)])
        np.testing.assert_array_equal(dropout_mask(*k, 200, p), want)


def test_keep_rate_is_one_minus_p_and_p_zero_keeps_all():
    n = 200_000
    for p in (0.05, 0.2, 0.5, 0.9):
        rate = dropout_mask(3, 7, 11, 2, SITE_MLP_OUT, n, p).mean()
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), (p, rate)
    assert dropout_mask(3, 7, 11, 2, SITE_ATTENTION, n, 0.0).all()
    assert int(keep_threshold(0.0)) == 0


def test_masks_are_deterministic_and_independent_across_keys_and_positions():
    p, n = 0.5, 100_000
    base = dropout_mask(5, 9, 4, 1, SITE_ATTN_OUT, n, p)
    np.testing.assert_array_equal(base, dropout_mask(5, 9, 4, 1, SITE_ATTN_OUT, n, p))
    # one key component changed: an independent mask, agreeing with base half the time
    for k in ((6, 9, 4, 1, 2), (5, 10, 4, 1, 2), (5, 9, 5, 1, 2), (5, 9, 4, 2, 2), (5, 9, 4, 1, 3)):
        agree = (dropout_mask(*k, n, p) == base).mean()
        assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(n), (k, agree)
    # neighbouring positions independent: P(both kept) = (1 - p)^2
    both = (base[1:] & base[:-1]).mean()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n), both
    both = (base[64:] & base[:-64]).mean()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n), both


def test_dropout_kernel_scales_kept_and_zeroes_dropped():
    B, T, C, p = 3, 5, 4, 0.3
    x = np.random.default_rng(0).normal(size=(B * T * C)).astype(np.float32)
    out = np.empty_like(x)
    dropout_forward(out, x, 7, 2, 10, 1, SITE_MLP_OUT, B, T * C, p)
    for b in range(B):
        mask = np.array([py_keep(py_key(7, 2, 10 + b, 1, SITE_MLP_OUT), i, p) for i in range(T * C)])
        row = slice(b * T * C, (b + 1) * T * C)
        np.testing.assert_allclose(out[row], np.where(mask, x[row] / (1 - p), 0.0), rtol=1e-6)
    inplace = x.copy()
    dropout_forward(inplace, inplace, 7, 2, 10, 1, SITE_MLP_OUT, B, T * C, p)
    np.testing.assert_array_equal(inplace, out)


# ---- the model with dropout against the float64 reference given the same masks ---------------

SITES = {"embedding": SITE_EMBEDDING, "attention": SITE_ATTENTION, "attn_out": SITE_ATTN_OUT,
         "mlp_out": SITE_MLP_OUT}
# (config, batch): a padded head size (4) with T 6, and head size 16 with T 16
CONFIGS = {
    "hs4-T6": (ModelConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=0.3), 2),
    "hs16-T16": (ModelConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.2), 2),
}


def reference_drop(cfg, key: DropoutKey, B, T):
    """drop(x, layer, site) for ref.gpt_loss: x times the masks dropout_mask gives each sequence
    key.first + b of the batch, scaled by 1 / (1 - p)."""
    p, C, NH = cfg.dropout, cfg.n_embd, cfg.n_head

    def drop(x, layer, site):
        n = NH * T * T if site == "attention" else T * C
        masks = np.stack([dropout_mask(key.seed, key.step, key.first + b, layer, SITES[site], n, p)
                          for b in range(B)])
        return x * masks.reshape(x.shape) / (1 - p)
    return drop


def jiggled(cfg, seed=0):
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, arr in model.param_views().items():
        arr[...] += rng.normal(0, 0.1 if arr.ndim < 3 and name not in ("wte", "wpe") else 0.05, arr.shape)
    return model


def tokens(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


@pytest.mark.parametrize("shape", CONFIGS)
def test_dropout_forward_and_backward_match_the_reference_with_the_same_masks(shape):
    cfg, B = CONFIGS[shape]
    T = cfg.block_size
    model = jiggled(cfg)
    x, y = tokens(cfg, B, T)
    key = DropoutKey(seed=3, step=17, first=5)
    loss = model.forward(x, y, dropout=key)
    p64 = {k: v.astype(np.float64) for k, v in model.param_views().items()}
    drop = reference_drop(cfg, key, B, T)
    ref_loss, ref_logits = ref.gpt_loss(p64, cfg, x, y, drop)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(model.logits, ref_logits, rtol=1e-4, atol=1e-4)
    # dropout acted: without masks, or with another step's masks, the loss differs
    assert abs(ref.gpt_loss(p64, cfg, x, y)[0] - ref_loss) > 1e-3
    other = reference_drop(cfg, DropoutKey(3, 18, 5), B, T)
    assert abs(ref.gpt_loss(p64, cfg, x, y, other)[0] - ref_loss) > 1e-3

    ref.assert_gradients_match_differences(model.param_views(model.backward()), p64,
                                           lambda: ref.gpt_loss(p64, cfg, x, y, drop)[0], 12)


def test_split_batch_with_global_sequence_indices_sums_to_the_full_batch():
    """Slices of a batch keyed by their first global sequence draw the full batch's masks."""
    cfg, _ = CONFIGS["hs16-T16"]
    model = jiggled(cfg)
    x, y = tokens(cfg, 5, 16, seed=2)
    full_loss = model.forward(x, y, dropout=DropoutKey(1, 4, 0))
    full = model.backward()
    summed, loss_sum = np.zeros_like(full), 0.0
    for lo, hi in ((0, 2), (2, 5)):
        ws = model.workspace(3)
        loss_sum += model.forward_into(ws, x[lo:hi], y[lo:hi], dropout=DropoutKey(1, 4, lo)) * (hi - lo)
        model.backward_into(ws, summed, 1.0)
    assert loss_sum / 5 == pytest.approx(full_loss, rel=1e-6)
    summed /= x.size
    assert np.abs(summed - full).max() <= 1e-5 * np.abs(full).max()


def test_no_key_or_p_zero_is_exactly_no_dropout():
    """Evaluation (no key) equals a dropout-free model bitwise; p = 0 with a key runs no kernel."""
    cfg, B = CONFIGS["hs16-T16"]
    x, y = tokens(cfg, B, cfg.block_size, seed=4)
    plain = jiggled(cfg.replace(dropout=0.0))
    plain_loss, plain_grad = plain.forward(x, y), plain.backward()
    with_p = jiggled(cfg)
    assert with_p.forward(x, y) == plain_loss
    np.testing.assert_array_equal(with_p.backward(), plain_grad)
    assert plain.forward(x, y, dropout=DropoutKey(1, 2, 3)) == plain_loss
    np.testing.assert_array_equal(plain.backward(), plain_grad)
    assert with_p.forward(x, y, dropout=DropoutKey(1, 2, 3)) != plain_loss


def test_sampling_is_unaffected_by_dropout():
    cfg, _ = CONFIGS["hs16-T16"]
    prompt = np.array([[1, 2, 3]], np.int32)
    plain, dropped = jiggled(cfg.replace(dropout=0.0)), jiggled(cfg.replace(dropout=0.5))
    for cache in (True, False):
        np.testing.assert_array_equal(plain.generate(prompt, 20, seed=1, cache=cache),
                                      dropped.generate(prompt, 20, seed=1, cache=cache))


def test_a_dropout_key_must_be_one():
    model = jiggled(CONFIGS["hs4-T6"][0])
    x, y = tokens(model.config, 1, 6)
    with pytest.raises(ConfigError, match="DropoutKey"):
        model.forward(x, y, dropout=(1, 2, 3))
    with pytest.raises(ConfigError, match="DropoutKey.step"):
        DropoutKey(0, -1, 0)


# ---- the config ----------------------------------------------------------------------------

@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.2", True])
def test_config_refuses_a_drop_probability_outside_0_1(p):
    with pytest.raises(ConfigError, match="ModelConfig.dropout"):
        ModelConfig(dropout=p)


def test_config_takes_0_to_below_1_and_round_trips():
    assert ModelConfig().dropout == 0.0
    cfg = ModelConfig(dropout=0.999)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig(dropout=0).dropout == 0.0


def test_shakespeare_char_preset_is_nanogpts_recipe():
    model_cfg, train_cfg = preset("shakespeare-char")
    assert (model_cfg.n_embd, model_cfg.n_layer, model_cfg.n_head, model_cfg.block_size,
            model_cfg.dropout) == (384, 6, 6, 256, 0.2)
    assert (train_cfg.batch_size, train_cfg.learning_rate, train_cfg.min_lr, train_cfg.warmup_steps,
            train_cfg.max_steps, train_cfg.beta2) == (64, 1e-3, 1e-4, 100, 5000, 0.99)


def test_cli_dropout_flag_reaches_the_run_config_and_the_checkpoint(tmp_path):
    from crystalline.checkpoint import read_checkpoint
    from crystalline.cli import main
    from crystalline.config import load_toml
    from crystalline.data.corpus import bundled_corpus
    corpus = tmp_path / "plays.txt"
    corpus.write_bytes(bundled_corpus().read_bytes()[:100_000])
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--steps", "2", "--workers", "2", "--dropout", "0.25",
                 "--run-dir", str(run), "--no-progress", "--sample", "0"]) == 0
    assert load_toml(run / "config.toml")[0].dropout == 0.25
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["model_config"]["dropout"] == 0.25
