"""The whole GPT: loss and gradient against the float64 reference (finite differences), the
engine's invariant (slices summed == full batch), workspace reuse, thread safety, training on
Tiny Shakespeare, sampling, and clear errors for bad input."""

import math
import pathlib
import threading

import numpy as np
import pytest

import reference as ref
from crystalline.config import ModelConfig
from crystalline.errors import ConfigError
from crystalline.model.gpt import GPT
from crystalline.model.kernels.adamw import adamw_step
from crystalline.model.kernels.clip import grad_norm, scale_
from crystalline.model.layout import ALIGN

MICRO = ModelConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)
# Whole-model finite differences at every head size the attention's tiles are built for (16, 32,
# 64, 128) and at the padded ones (4, 48): (config, batch). T not a multiple of 16 or 4 checks the
# tails, T = 16 and 32 whole tiles.
FD_PATHS = {
    "hs4-T6": (MICRO, 2),
    "hs16-T8": (ModelConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=32), 2),
    "hs16-T16": (ModelConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32), 2),
    "hs32-T32": (ModelConfig(vocab_size=13, block_size=32, n_layer=1, n_head=1, n_embd=32), 1),
    "hs48-T7": (ModelConfig(vocab_size=13, block_size=7, n_layer=1, n_head=2, n_embd=96), 2),
    "hs64-T13": (ModelConfig(vocab_size=13, block_size=13, n_layer=1, n_head=2, n_embd=128), 2),
    "hs128-T9": (ModelConfig(vocab_size=13, block_size=9, n_layer=1, n_head=1, n_embd=128), 2),
}
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")     # the README's list
TINY = ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
CORPUS = pathlib.Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"


def jiggled(cfg, seed=0):
    """A model whose LayerNorm gains/offsets and biases are random too (so their grads are not trivial)."""
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    p = model.param_views()
    for name in ("ln1w", "ln1b", "ln2w", "ln2b", "lnfw", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        p[name][...] += rng.normal(0, 0.1, p[name].shape)
    for name in ("qkvw", "fcw", "attprojw", "fcprojw", "wte", "wpe"):
        p[name][...] *= 10   # larger weights: attention and GELU away from their linear regimes
    return model


def batch(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


@pytest.mark.parametrize("shape, dtype", [((7,), np.uint16), ((3, 5), np.float32),
                                          ((1000, 33), np.uint32)])
def test_zeros_are_zeros_on_a_page_boundary(shape, dtype):
    from crystalline.model.layout import zeros
    a = zeros(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % 4096 == 0 and not a.any()
    assert zeros(shape, dtype, align=64).ctypes.data % 64 == 0


def test_layout_and_init():
    model = GPT(TINY, seed=0)
    names = [n for n, _, _ in model.layout]
    assert names[:2] == ["wte", "wpe"] and names[-2:] == ["lnfw", "lnfb"]
    assert all(off % ALIGN == 0 for _, _, off in model.layout)
    assert model.params.dtype == np.float32 and model.params.flags.c_contiguous
    p = model.param_views()
    assert p["qkvw"].shape == (2, 96, 32) and p["fcprojw"].shape == (2, 32, 128)
    assert np.shares_memory(p["qkvw"], model.params)
    assert model.num_parameters == sum(v.size for v in p.values())
    assert np.all(p["ln1w"] == 1) and np.all(p["qkvb"] == 0)
    assert p["wte"].std() == pytest.approx(0.02, rel=0.05)
    assert p["fcprojw"].std() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)
    np.testing.assert_array_equal(GPT(TINY, seed=0).params, model.params)
    assert not np.array_equal(GPT(TINY, seed=1).params, model.params)
    mask = model.param_views(model.decay_mask)
    for name, arr in mask.items():
        assert np.all(arr == (1.0 if name in DECAYED else 0.0)), name


@pytest.mark.parametrize("path", FD_PATHS)
def test_loss_matches_reference_and_grad_matches_finite_differences(path):
    cfg, B = FD_PATHS[path]
    model = jiggled(cfg)
    idx, targets = batch(cfg, B, cfg.block_size)
    loss = model.forward(idx, targets)
    p64 = {k: v.astype(np.float64) for k, v in model.param_views().items()}
    ref_loss, ref_logits = ref.gpt_loss(p64, cfg, idx, targets)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(model.logits, ref_logits, rtol=1e-4, atol=1e-4)
    ref.assert_gradients_match_differences(model.param_views(model.backward()), p64,
                                           lambda: ref.gpt_loss(p64, cfg, idx, targets)[0], 16)


def test_split_batch_sums_to_full_batch():
    """The engine's invariant: backward_into on slices with dloss=1, summed, / tokens == full."""
    model = jiggled(TINY)
    idx, targets = batch(TINY, 6, 32, seed=3)
    full_loss = model.forward(idx, targets)
    full = model.backward()
    rows = np.zeros((2, model.params.size), np.float32)
    losses = []
    for w, sl in enumerate((slice(0, 4), slice(4, 6))):
        ws = model.workspace(4)
        losses.append(model.forward_into(ws, idx[sl], targets[sl]) * (sl.stop - sl.start))
        model.backward_into(ws, rows[w], 1.0)
    summed = (rows[0] + rows[1]) / idx.size
    assert sum(losses) / 6 == pytest.approx(full_loss, rel=1e-6)
    err = np.abs(summed - full).max() / np.abs(full).max()
    assert err < 1e-5


def test_workspace_reuse_is_repeatable_and_accumulates():
    model = jiggled(TINY)
    ws = model.workspace(4)
    a = batch(TINY, 4, 32, seed=1)
    b = batch(TINY, 3, 32, seed=2)
    g1, g2 = np.zeros_like(model.params), np.zeros_like(model.params)
    l1 = model.forward_into(ws, *a)
    model.backward_into(ws, g1, 1.0)
    model.forward_into(ws, *b)                    # different batch size in between
    model.backward_into(ws, np.zeros_like(model.params), 1.0)
    l2 = model.forward_into(ws, *a)
    model.backward_into(ws, g2, 1.0)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)
    model.backward_into(ws, g2, 1.0)              # accumulates
    np.testing.assert_allclose(g2, 2 * g1, rtol=1e-5, atol=1e-6 * np.abs(g1).max())


def test_backward_without_accumulate_overwrites_every_gradient_tensor():
    model = jiggled(TINY)
    ws = model.workspace(3)
    model.forward_into(ws, *batch(TINY, 3, 32, seed=4))
    expected = np.zeros_like(model.params)
    model.backward_into(ws, expected, 1.0)
    row = np.full_like(model.params, np.nan)      # stale values everywhere, padding included
    model.backward_into(ws, row, 1.0, accumulate=False)
    got, want = model.param_views(row), model.param_views(expected)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_threads_match_serial():
    model = jiggled(TINY)
    batches = [batch(TINY, 2, 32, seed=10 + i) for i in range(4)]
    serial = np.zeros((4, model.params.size), np.float32)
    serial_loss = []
    for i, (x, y) in enumerate(batches):
        ws = model.workspace(2)
        serial_loss.append(model.forward_into(ws, x, y))
        model.backward_into(ws, serial[i], 1.0)
    rows = np.zeros_like(serial)
    losses = [None] * 4
    wss = [model.workspace(2) for _ in range(4)]
    start = threading.Barrier(4)

    def work(i):
        start.wait()
        for _ in range(3):
            rows[i].fill(0)
            losses[i] = model.forward_into(wss[i], *batches[i])
            model.backward_into(wss[i], rows[i], 1.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert losses == serial_loss
    np.testing.assert_array_equal(rows, serial)


def test_tiny_preset_learns_tiny_shakespeare():
    data = np.frombuffer(CORPUS.read_bytes(), np.uint8).astype(np.int32)
    model = GPT(TINY, seed=0)
    m, v = np.zeros_like(model.params), np.zeros_like(model.params)
    rng = np.random.default_rng(0)
    ws, grads = model.workspace(8), np.zeros_like(model.params)
    T, losses = TINY.block_size, []
    for step in range(1, 151):
        starts = rng.integers(0, data.size - T - 1, 8)
        x = np.stack([data[s:s + T] for s in starts])
        y = np.stack([data[s + 1:s + T + 1] for s in starts])
        losses.append(model.forward_into(ws, x, y))
        grads.fill(0)
        model.backward_into(ws, grads, 1.0 / x.size)
        norm = grad_norm(grads)
        if norm > 1.0:
            scale_(grads, 1.0 / norm)
        adamw_step(model.params, grads, m, v, model.decay_mask, 3e-3, 0.9, 0.95, 1e-8, 0.1, step)
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)
    last = np.mean(losses[-10:])
    assert last < 3.0, losses   # measured: 5.55 at step 1, about 2.75 over steps 141-150


def test_generate_in_range_and_deterministic():
    model = GPT(TINY, seed=0)
    prompt = np.array([[1, 2, 3]], np.int32)
    a = model.generate(prompt, 40, temperature=0.8, top_k=10, seed=5)   # runs past block_size
    b = model.generate(prompt, 40, temperature=0.8, top_k=10, seed=5)
    c = model.generate(prompt, 40, temperature=0.8, top_k=10, seed=6)
    assert a.shape == (1, 43) and a.dtype == np.int32
    assert np.all((a >= 0) & (a < TINY.vocab_size))
    np.testing.assert_array_equal(a[:, :3], prompt)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_defaults_to_temperature_1_without_top_k():
    model = GPT(TINY, seed=0)
    model.param_views()["wte"][...] *= 40            # sharp logits: the temperature shows
    prompt = np.array([[1, 2, 3]], np.int32)
    explicit = model.generate(prompt, 24, temperature=1.0, top_k=None, seed=3)
    np.testing.assert_array_equal(model.generate(prompt, 24, seed=3), explicit)
    assert not np.array_equal(model.generate(prompt, 24, temperature=2.0, seed=3), explicit)


def test_the_simple_apis_refusals_in_full():
    model = GPT(TINY, seed=0)
    with pytest.raises(ConfigError) as e:
        model.backward()
    assert str(e.value) == "no forward has run yet: call model.forward(idx, targets) first"
    for forward in (model.forward, lambda idx: model.forward_into(model.workspace(1), idx)):
        with pytest.raises(ConfigError) as e:
            forward(np.zeros(3, np.int32))
        assert str(e.value) == "idx must be a 2-D numpy integer array (B, T), got ndarray with shape (3,)"
    with pytest.raises(ConfigError) as e:                # the bad id named, not the good lowest one
        model.forward(np.array([[0, 5, TINY.vocab_size]], np.int32))
    assert str(e.value) == f"idx holds token id {TINY.vocab_size} outside 0..vocab_size-1 = {TINY.vocab_size - 1}"
    with pytest.raises(ConfigError) as e:
        model.workspace(0)
    assert str(e.value) == "workspace max_batch = 0 must be a positive integer"


@pytest.mark.parametrize("idx, match", [
    (np.zeros((1, 33), np.int32), "block_size"),
    (np.full((1, 4), 256, np.int32), "vocab_size"),
    (np.full((1, 4), -1, np.int64), "outside"),
    (np.zeros((1, 4), np.float32), "integer dtype"),
    (np.zeros(4, np.int32), "2-D"),
    ([[1, 2]], "2-D"),
])
def test_bad_input_is_a_clear_config_error(idx, match):
    model = GPT(TINY, seed=0)
    with pytest.raises(ConfigError, match=match):
        model.forward(idx, None)


def test_bad_targets_and_buffers():
    model = GPT(TINY, seed=0)
    x, y = batch(TINY, 2, 8)
    with pytest.raises(ConfigError, match="targets shape"):
        model.forward(x, y[:, :4])
    ws = model.workspace(1, 8)
    with pytest.raises(ConfigError, match="workspace"):
        model.forward_into(ws, x, y)
    with pytest.raises(ConfigError, match="forward_into"):
        model.backward_into(model.workspace(1), np.zeros_like(model.params))
    model.forward_into(ws, x[:1], y[:1])
    with pytest.raises(ConfigError, match="grad_row"):
        model.backward_into(ws, np.zeros(model.params.size, np.float64))


def test_workspace_views_share_memory_for_partial_batches():
    """Every activation view of a smaller batch or shorter sequence is a view, never a copy."""
    model = GPT(TINY, seed=0)
    ws = model.workspace(4)
    for B, T in ((4, 32), (3, 32), (1, 7)):
        s = ws.shaped(TINY, B, T)
        for name, arr in s.items():
            for part in (arr if isinstance(arr, list) else [arr]):
                assert np.shares_memory(part, ws.buffer), (B, T, name)


def test_buffers_hold_exactly_what_the_model_needs():
    """No tensor larger than its shape needs and no gap beyond 64-byte alignment: the first
    tensor starts at 0, each next one at the first aligned offset after the last, and the MLP's
    and attention's activations have the sizes the model reads (4C per token, scratch linear in T)."""
    model = GPT(TINY, seed=0)
    ws = model.workspace(3)
    C, T, L, N = TINY.n_embd, TINY.block_size, TINY.n_layer, 3 * TINY.block_size
    for layout, total in ((model.layout, model.params.size), (ws.layout, ws.buffer.size)):
        end = 0
        for name, shape, offset in layout:
            assert offset == -(-end // ALIGN) * ALIGN, name
            end = offset + int(np.prod(shape))
        assert total == -(-end // ALIGN) * ALIGN
    assert ws.a["fch"].shape == (L, N, 4 * C)
    assert ws.a["fch_gelu"].shape == (N, 4 * C)       # one layer's, recomputed in the backward
    assert ws.a["dfch"].shape == ws.a["dfch_gelu"].shape == (N, 4 * C)
    hs = C // TINY.n_head          # 16, T = 32: both already multiples of 16
    # attention: one row of log-sum-exp per query and head, no T x T matrix; its scratch holds
    # five packed (T, hs) copies of one head, two 64 x T blocks of P and dS, D and a 4 x hs tile
    assert ws.a["lse"].shape == (L, 3 * TINY.n_head * T)
    assert ws.a["att_scratch"].shape == (5 * T * hs + 2 * 64 * T + T + 4 * hs,)
    assert "att" not in ws.a and "datt" not in ws.a


def test_every_input_refusal_of_the_allocation_free_path_in_full():
    """forward_into / backward_into / workspace name what is wrong and how to fix it."""
    model, P = GPT(TINY, seed=0), GPT(TINY).params.size
    ws = model.workspace(2)
    x, y = batch(TINY, 2, 8)
    cases = [
        (lambda: model.forward_into(ws, [[1, 2]]),
         "idx must be a 2-D numpy integer array (B, T), got list with shape None"),
        (lambda: model.forward(x.astype(np.float32)),
         "idx must have an integer dtype, got float32; pass token ids, e.g. x.astype(np.int32)"),
        (lambda: model.forward(np.zeros((0, 4), np.int32)),
         "idx is empty (shape (0, 4)); pass at least one token"),
        (lambda: model.forward(np.array([[-3, 5]], np.int32)),
         f"idx holds token id -3 outside 0..vocab_size-1 = {TINY.vocab_size - 1}"),
        (lambda: model.forward_into(ws, x, y.astype(np.float64)),
         "targets must have an integer dtype, got float64; pass token ids, e.g. x.astype(np.int32)"),
        (lambda: model.forward_into(ws, x, y, dropout=5),
         "dropout must be a DropoutKey or None, got int"),
        (lambda: model.forward_into(ws, x, y, params=np.zeros(P, np.float64)),
         f"params must be float32 of shape ({P},), got float64 ({P},)"),
        (lambda: (model.forward_into(ws, x, y), model.backward_into(ws, np.zeros(2 * P, np.float32)[::2])),
         f"grad_row must be a contiguous float32 array of shape ({P},)"),
        (lambda: model.workspace(1, seq_len=0), "workspace seq_len = 0 must be in 1..block_size = 32"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert str(e.value) == message
    model.forward_into(ws, x)                              # no targets: nothing to differentiate
    with pytest.raises(ConfigError) as e:
        model.backward_into(ws, np.zeros(P, np.float32))
    assert str(e.value) == "backward_into needs a forward_into with targets on this workspace first"


def test_the_documented_defaults():
    """seed 0, the sum-of-losses gradient (dloss 1), generate's seed 0, a workspace of the asked
    length, float32 decay mask, the simple API growing for any (B, T), projections' init std."""
    model = GPT(TINY)
    np.testing.assert_array_equal(model.params, GPT(TINY, seed=0).params)
    assert model.decay_mask.dtype == np.float32
    x, y = batch(TINY, 2, 8)
    model.forward(x, y)
    mean_grad = model.backward().copy()
    ws = model.workspace(2)
    model.forward_into(ws, x, y)
    grad = np.zeros_like(model.params)
    model.backward_into(ws, grad, accumulate=False)
    np.testing.assert_allclose(grad, mean_grad * x.size, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.generate(x[:1, :3], 5), model.generate(x[:1, :3], 5, seed=0))
    short = model.workspace(2, seq_len=1)
    assert short.seq_len == 1 and short.nbytes < ws.nbytes
    fresh = GPT(TINY)
    for shape in ((4, 2), (6, 1), (1, 1)):                 # more sequences than tokens; fewer
        # tokens than layers
        fresh.forward(np.zeros(shape, np.int32))
        assert fresh.logits.shape == (*shape, TINY.vocab_size)
    p = model.param_views()
    ratio = p["attprojw"].std() / p["qkvw"].std()          # nanoGPT: 0.02 / sqrt(2 L) against 0.02
    assert ratio == pytest.approx(1 / math.sqrt(2 * TINY.n_layer), rel=0.1)
    assert p["fcprojw"].std() / p["fcw"].std() == pytest.approx(1 / math.sqrt(2 * TINY.n_layer), rel=0.1)


def test_forward_into_on_other_parameters_is_that_models_forward_and_backward():
    """params= runs the step on any flat array of the same layout (not the model's own)."""
    model, other = jiggled(TINY, seed=0), jiggled(TINY, seed=5)
    x, y = batch(TINY, 2, 8)
    ws = model.workspace(2)
    loss = model.forward_into(ws, x, y, params=other.params)
    grad = np.zeros_like(model.params)
    model.backward_into(ws, grad, accumulate=False)
    assert loss == pytest.approx(other.forward(x, y), rel=1e-6)
    np.testing.assert_allclose(grad, other.backward() * x.size, rtol=1e-4, atol=1e-6)
