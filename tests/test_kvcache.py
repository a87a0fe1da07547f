"""Generation with a KV cache: the cached step's logits against the float64 NumPy reference,
the same tokens as the uncached path, nothing allocated per token, and the one sampling rule."""

import math
import tracemalloc

import numpy as np
import pytest

import reference as ref
from crystalline.config import ModelConfig
from crystalline.errors import ConfigError
from crystalline.model.gpt import GPT
from crystalline.model.kernels.sampling import sample_rows
from crystalline.model.kvcache import KVCache
from crystalline.model.sample import check_sampling

CFG = ModelConfig(vocab_size=61, block_size=24, n_layer=2, n_head=3, n_embd=24)


def model_with_noise(cfg=CFG, seed=0):
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, arr in model.param_views().items():     # non-trivial LayerNorm gains and biases
        if not name.endswith("w") or name.startswith("ln"):
            arr[...] += rng.normal(0, 0.1, arr.shape).astype(np.float32)
    qkvw = model.param_views()["qkvw"]                 # attention scores of order 1, not ~0
    qkvw[...] = rng.normal(0, 0.4, qkvw.shape).astype(np.float32)
    return model


def test_cached_steps_give_the_reference_logits_at_every_position():
    model = model_with_noise()
    B, T = 2, CFG.block_size
    x = np.random.default_rng(3).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    p64 = {k: v.astype(np.float64) for k, v in model.param_views().items()}
    _, expected = ref.gpt_loss(p64, CFG, x, x)                  # (B, T, V) float64
    cache = KVCache(model, B, T)
    got = [cache.prefill(x[:, :5]).copy()]
    for t in range(5, T):
        got.append(cache.step(np.ascontiguousarray(x[:, t])).copy())
    got = np.stack(got, axis=1)                                # positions 4 .. T-1
    np.testing.assert_allclose(got, expected[:, 4:], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("top_k", [None, 1, 7])
@pytest.mark.parametrize("prompt_len", [1, 5, 30])       # 30 > block_size: cropped from the start
def test_cached_and_uncached_generation_give_the_same_tokens(top_k, prompt_len):
    model = model_with_noise(seed=2)
    prompt = np.random.default_rng(4).integers(0, CFG.vocab_size, (3, prompt_len))
    kw = dict(temperature=0.9, top_k=top_k, seed=11)
    cached = model.generate(prompt, 40, cache=True, **kw)      # runs past block_size
    uncached = model.generate(prompt, 40, cache=False, **kw)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (3, prompt_len + 40) and (cached[:, :prompt_len] == prompt).all()
    assert not np.array_equal(cached, model.generate(prompt, 40, cache=True, temperature=0.9,
                                                     top_k=top_k, seed=12)) or top_k == 1


def test_a_cached_step_allocates_nothing():
    cfg = ModelConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    B = 4
    cache = KVCache(model, B, cfg.block_size)
    tokens = np.arange(B, dtype=np.int32)
    cache.prefill(np.zeros((B, 2), np.int32))
    cache.step(tokens)                                         # compile / warm up
    tracemalloc.start()
    for _ in range(40):
        cache.step(tokens)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    logits_bytes = B * cfg.vocab_size * 4                      # 64 KiB: one (B, V) array
    assert peak < logits_bytes // 4, peak


def test_sample_rows_draws_from_the_tempered_top_k_softmax():
    logits = np.array([[2.0, 1.0, 0.5, -1.0, 3.0]], np.float32)
    V, n, temperature = 5, 20000, 0.7
    rng = np.random.default_rng(0)
    probs, scratch = np.empty(V), np.empty(V, np.float32)
    for top_k in (5, 3, 1):
        counts = np.zeros(V)
        token = np.empty(1, np.int32)
        for u in rng.random(n):
            sample_rows(token, logits, probs, scratch, np.array([u]), temperature, top_k, 1, V)
            counts[token[0]] += 1
        kept = np.argsort(-logits[0])[:top_k]
        expected = np.zeros(V)
        expected[kept] = np.exp(logits[0, kept] / temperature)
        expected /= expected.sum()
        np.testing.assert_allclose(counts / n, expected, atol=0.012)


@pytest.mark.parametrize("kw, named", [
    ({"temperature": math.inf}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_k": 62}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"max_new_tokens": 0}, "tokens"), ({"max_new_tokens": 3_000_000_000}, "tokens"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": 2**63}, "seed"),
])
def test_one_rule_checks_every_sampling_argument(kw, named):
    args = {"max_new_tokens": 5, "temperature": 1.0, "top_k": None, "seed": 0, **kw}
    with pytest.raises(ConfigError, match=named):
        check_sampling(CFG.vocab_size, args["max_new_tokens"], args["temperature"], args["top_k"],
                       args["seed"])
    model = GPT(CFG)
    with pytest.raises(ConfigError, match=named):       # generate goes through the same rule
        model.generate(np.zeros((1, 2), np.int32), args["max_new_tokens"],
                       temperature=args["temperature"], top_k=args["top_k"], seed=args["seed"])


def test_without_a_vocabulary_only_top_ks_upper_bound_is_skipped():
    check_sampling(None, 5, 0.8, 10**6, 0)
    with pytest.raises(ConfigError, match="top_k"):
        check_sampling(None, 5, 0.8, 0, 0)


def test_the_cli_refuses_an_infinite_temperature(tmp_path, capsys):
    from crystalline.cli import main
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--workers", "1", "--run-dir", str(run), "--no-progress",
                 "--sample", "0"]) == 0
    assert main(["sample", "--ckpt", str(run / "checkpoint.safetensors"), "--temperature", "inf"]) == 2
    assert "temperature" in capsys.readouterr().err
