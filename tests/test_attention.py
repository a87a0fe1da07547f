"""Flash attention (kernels/attention.py) against a slow, obvious float64 reference written here,
PyTorch's autograd in float64, and finite differences: every head size the register tiles are
built for (16, 32, 64, 128), padded ones (4, 8, 48), T from 1 to 1024 (tails included), dropout
with the masks drawn from dropout_rng, NaN in every scratch and output, and the workspace's
memory at T = 1024 from the layout (no T x T matrix anywhere)."""

import math

import numpy as np
import pytest

from crystalline.config import ModelConfig
from crystalline.model.gpt import GPT
from crystalline.model.kernels.attention import (attention_backward, attention_forward,
                                                 scratch_floats)
from crystalline.model.kernels.dropout_rng import SITE_ATTENTION, dropout_mask

rng = np.random.default_rng(17)


def reference(qkv, NH, keep=None, p=0.0):
    """Causal attention in float64, one query row at a time: y (B, T, C) and each row's
    log-sum-exp (B, NH, T). keep: (B, NH, T, T) bool, the probabilities kept by dropout."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    y, lse = np.zeros((B, T, C)), np.zeros((B, NH, T))
    for b in range(B):
        for h in range(NH):
            q, k, v = (qkv[b, :, i * C + h * hs:i * C + (h + 1) * hs] for i in range(3))
            for i in range(T):
                s = k[:i + 1] @ q[i] / math.sqrt(hs)
                lse[b, h, i] = s.max() + math.log(np.exp(s - s.max()).sum())
                prob = np.exp(s - lse[b, h, i])
                if keep is not None:
                    prob = prob * keep[b, h, i, :i + 1] / (1.0 - p)
                y[b, i, h * hs:(h + 1) * hs] = prob @ v[:i + 1]
    return y, lse


def masks(B, NH, T, p, seed, step, seq0, layer):
    """dropout_rng's stream for each sequence seq0 + b, position (h * T + i) * T + j."""
    return np.stack([dropout_mask(seed, step, seq0 + b, layer, SITE_ATTENTION, NH * T * T, p)
                     .reshape(NH, T, T) for b in range(B)])


def torch_gradient(qkv, dout, NH, keep=None, p=0.0):
    """d sum(y * dout) / d qkv by PyTorch autograd in float64 (softmax, mask, @ v)."""
    torch = pytest.importorskip("torch")
    B, T, C3 = qkv.shape
    C, hs = C3 // 3, C3 // 3 // NH
    x = torch.tensor(qkv, dtype=torch.float64, requires_grad=True)
    q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in x.split(C, dim=2))
    s = q @ k.transpose(-1, -2) / math.sqrt(hs)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    prob = torch.softmax(s, -1)
    if keep is not None:
        prob = prob * torch.tensor(keep) / (1.0 - p)
    y = (prob @ v).transpose(1, 2).reshape(B, T, C)
    (y * torch.tensor(dout, dtype=torch.float64)).sum().backward()
    return x.grad.numpy()


def run(qkv, dout, NH, accumulate=False, **dropout):
    """Our forward and backward on NaN-filled outputs and scratch: (y, lse, dqkv)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    x, dy = qkv.reshape(B * T, C3), dout.reshape(B * T, C)
    scratch = np.full(scratch_floats(T, C // NH), np.nan, np.float32)
    out, lse = np.full((B * T, C), np.nan, np.float32), np.full((B, NH, T), np.nan, np.float32)
    attention_forward(out, lse, x, B, T, C, NH, scratch, **dropout)
    dqkv = np.full((B * T, C3), np.nan, np.float32)
    scratch[:] = np.nan
    attention_backward(dqkv, dy, x, out, lse, B, T, C, NH, False, scratch, **dropout)
    return out.reshape(B, T, C), lse, dqkv.reshape(B, T, C3)


def assert_close(got, want, tol=1e-4):
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12)
    assert err < tol, f"relative error {err:.2e}"


def inputs(B, T, C):
    return (rng.standard_normal((B, T, 3 * C)).astype(np.float32),
            rng.standard_normal((B, T, C)).astype(np.float32))


SHAPES = [(hs, T) for hs in (16, 32, 64, 128) for T in (1, 7, 16, 100, 256, 1024)]


@pytest.mark.parametrize("hs, T", SHAPES)
def test_matches_float64_reference_and_torch(hs, T):
    """Output, log-sum-exp and dqkv at the tiles' head sizes, T from one token to 1024."""
    B, NH = (2, 2) if T <= 100 else (1, 1)
    qkv, dout = inputs(B, T, NH * hs)
    y, lse, dqkv = run(qkv, dout, NH)
    ry, rlse = reference(qkv.astype(np.float64), NH)
    assert_close(y, ry)
    np.testing.assert_allclose(lse, rlse, rtol=1e-5, atol=1e-5)
    assert_close(dqkv, torch_gradient(qkv, dout, NH))


@pytest.mark.parametrize("hs, T, NH", [(4, 7, 2), (8, 33, 3), (48, 20, 2), (12, 5, 1)])
def test_padded_head_sizes(hs, T, NH):
    """Head sizes that are not multiples of 16 run on the same tiles, zero-padded."""
    qkv, dout = inputs(2, T, NH * hs)
    y, lse, dqkv = run(qkv, dout, NH)
    ry, rlse = reference(qkv.astype(np.float64), NH)
    assert_close(y, ry)
    np.testing.assert_allclose(lse, rlse, rtol=1e-5, atol=1e-5)
    assert_close(dqkv, torch_gradient(qkv, dout, NH))


@pytest.mark.parametrize("hs, T, p", [(16, 7, 0.2), (32, 100, 0.5), (64, 16, 0.1), (128, 37, 0.3),
                                      (8, 300, 0.2)])
def test_dropout_matches_reference_given_the_same_masks(hs, T, p):
    """dropout(softmax(s)) @ v with the masks of dropout_rng's stream per (seed, step, seq0 + b,
    layer): forward and backward against the references handed the same masks."""
    B, NH = 2, 2
    qkv, dout = inputs(B, T, NH * hs)
    args = dict(seed=5, step=11, seq0=3, layer=1)
    keep = masks(B, NH, T, p, **args)
    y, lse, dqkv = run(qkv, dout, NH, dropout=p, **args)
    ry, rlse = reference(qkv.astype(np.float64), NH, keep, p)
    assert_close(y, ry)
    np.testing.assert_allclose(lse, rlse, rtol=1e-5, atol=1e-5)   # normalised before dropout
    assert_close(dqkv, torch_gradient(qkv, dout, NH, keep, p))
    # another step, layer or sequence offset draws another mask
    for other in (dict(args, step=12), dict(args, layer=2), dict(args, seq0=4)):
        assert not np.allclose(run(qkv, dout, NH, dropout=p, **other)[0], y)


def test_sequence_b_draws_the_mask_of_sequence_seq0_plus_b():
    """Sequence 1 of a call at seq0 = 4 equals sequence 0 of a call at seq0 = 5, bitwise."""
    qkv, dout = inputs(2, 20, 32)
    args = dict(dropout=0.3, seed=1, step=2, layer=0)
    y2, _, g2 = run(qkv, dout, 2, seq0=4, **args)
    y1, _, g1 = run(qkv[1:], dout[1:], 2, seq0=5, **args)
    np.testing.assert_array_equal(y2[1], y1[0])
    np.testing.assert_array_equal(g2[1], g1[0])


def test_dropout_zero_is_no_dropout():
    qkv, dout = inputs(2, 40, 64)
    plain = run(qkv, dout, 2)
    for got, want in zip(run(qkv, dout, 2, dropout=0.0, seed=9, step=3, seq0=1, layer=2), plain):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("hs, T, p", [(16, 5, 0.0), (4, 6, 0.0), (32, 3, 0.4), (64, 4, 0.0)])
def test_backward_matches_finite_differences(hs, T, p):
    """Every entry of dqkv against float64 central differences of the reference forward."""
    B, NH = 2, 2
    qkv, dout = inputs(B, T, NH * hs)
    keep = masks(B, NH, T, p, 0, 1, 0, 0) if p else None
    _, _, dqkv = run(qkv, dout, NH, dropout=p, seed=0, step=1, seq0=0, layer=0)
    x = qkv.astype(np.float64)
    fd = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = (reference(x, NH, keep, p)[0] * dout).sum()
        x[i] = old - h
        fm = (reference(x, NH, keep, p)[0] * dout).sum()
        x[i] = old
        fd[i] = (fp - fm) / (2 * h)
    assert_close(dqkv, fd)


def test_backward_accumulates_or_overwrites():
    B, T, C, NH = 2, 45, 64, 2
    qkv, dout = inputs(B, T, C)
    x, dy = qkv.reshape(B * T, 3 * C), dout.reshape(B * T, C)
    out, lse = np.zeros((B * T, C), np.float32), np.zeros((B, NH, T), np.float32)
    attention_forward(out, lse, x, B, T, C, NH)
    overwritten = np.full_like(x, np.nan)
    attention_backward(overwritten, dy, x, out, lse, B, T, C, NH, False)
    accumulated = np.full_like(x, 0.5)
    attention_backward(accumulated, dy, x, out, lse, B, T, C, NH, True)
    np.testing.assert_allclose(accumulated - 0.5, overwritten, rtol=1e-5, atol=1e-6)


def test_refuses_a_small_scratch_and_a_bad_dropout():
    T, C, NH = 32, 64, 2
    qkv, dout = inputs(1, T, C)
    x, dy = qkv.reshape(T, 3 * C), dout.reshape(T, C)
    out, lse = np.zeros((T, C), np.float32), np.zeros((1, NH, T), np.float32)
    small = np.zeros(scratch_floats(T, C // NH) - 1, np.float32)
    with pytest.raises(ValueError, match="scratch_floats"):
        attention_forward(out, lse, x, 1, T, C, NH, small)
    with pytest.raises(ValueError, match="scratch_floats"):
        attention_backward(np.zeros_like(x), dy, x, out, lse, 1, T, C, NH, True, small)
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout"):
            attention_forward(out, lse, x, 1, T, C, NH, None, p)


def test_workspace_memory_at_t1024_is_linear_in_t():
    """The whole workspace of a worker at T = 1024 (the issue's last row: C 256, 6 layers, 8
    heads, B 8), in bytes from a formula written here: no (B, NH, T, T) tensor, and attention's
    scratch 5 T hs + 2 * 64 T + T + 4 hs floats."""
    C, L, NH, V, T, B = 256, 6, 8, 256, 1024, 8
    cfg = ModelConfig(vocab_size=V, block_size=T, n_layer=L, n_head=NH, n_embd=C)
    hs, N = C // NH, B * T
    per_layer = (N * C + 2 * N          # ln1, its mean and rstd
                 + 3 * N * C            # qkv
                 + N * C                # atty (the attention's output)
                 + B * NH * T           # lse: one float per query row and head
                 + N * C                # residual2
                 + N * C + 2 * N        # ln2
                 + 4 * N * C            # fch (gelu(fch) is recomputed in the backward)
                 + N * C)               # residual3
    rest = (N * C                       # encoded
            + N * C + 2 * N             # lnf
            + 2 * N * V + N             # logits, probs, losses
            + N * C                     # proj
            + 4 * N * C                 # gelu(fch) of the layer at hand
            + N * C + N * C + N * C + 3 * N * C + 2 * 4 * N * C + N * V   # backward scratch
            + 5 * T * hs + 2 * 64 * T + T + 4 * hs)                       # attention scratch
    want = 4 * (L * per_layer + rest)
    ws = GPT(cfg).workspace(B)
    assert ws.nbytes == want
    # what the T x T probabilities alone would have cost (1.5 GiB) exceeds all of it now (0.9 GiB)
    assert 4 * L * B * NH * T * T > ws.nbytes
