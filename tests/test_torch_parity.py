"""The same GPT built in PyTorch from our flat parameters: loss, every gradient, and ten AdamW
steps' losses must agree (llm.c's test_gpt2, asserting). Skipped where torch is not installed."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crystalline.config import ModelConfig  # noqa: E402
from crystalline.model.gpt import GPT  # noqa: E402
from crystalline.model.kernels.adamw import adamw_step  # noqa: E402
from crystalline.model.layout import DECAYED  # noqa: E402

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)


def torch_loss(p, cfg, idx, targets):
    """nanoGPT's forward written over a dict of leaf tensors with our names and shapes."""
    B, T = idx.shape
    C, NH = cfg.n_embd, cfg.n_head
    x = p["wte"][idx] + p["wpe"][:T]
    for l in range(cfg.n_layer):
        h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], 1e-5)
        q, k, v = F.linear(h, p["qkvw"][l], p["qkvb"][l]).split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + F.linear(y, p["attprojw"][l], p["attprojb"][l])
        h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], 1e-5)
        h = F.gelu(F.linear(h, p["fcw"][l], p["fcb"][l]), approximate="tanh")
        x = x + F.linear(h, p["fcprojw"][l], p["fcprojb"][l])
    logits = F.linear(F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], 1e-5), p["wte"])
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)), logits


def torch_adamw(tp, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw):
    """torch.optim.AdamW over `tp` with our decay groups (crystalline.model.layout.DECAYED)."""
    return torch.optim.AdamW([
        {"params": [tp[n] for n in tp if n in DECAYED], "weight_decay": weight_decay},
        {"params": [tp[n] for n in tp if n not in DECAYED], "weight_decay": 0.0},
    ], lr=lr, betas=betas, eps=eps, **kw)


def torch_train_step(tp, opt, cfg, x, y, clip=1.0) -> float:
    """One PyTorch step on (B, T) long tensors: loss, backward, gradient clipping, AdamW."""
    loss, _ = torch_loss(tp, cfg, x, y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
    opt.step()
    return loss.item()


def make(seed=0):
    model = GPT(CFG, seed=seed)
    rng = np.random.default_rng(seed + 1)
    p = model.param_views()
    for name in ("ln1w", "ln1b", "ln2w", "ln2b", "lnfw", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        p[name][...] += rng.normal(0, 0.1, p[name].shape)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    data = np.random.default_rng(seed + 2).integers(0, CFG.vocab_size, (4, CFG.block_size + 1))
    return model, tp, data[:, :-1].astype(np.int32), data[:, 1:].astype(np.int32)


def test_loss_logits_and_every_gradient_match_torch():
    torch.set_num_threads(1)
    model, tp, x, y = make()
    loss = model.forward(x, y)
    grads = model.param_views(model.backward())
    tloss, tlogits = torch_loss(tp, CFG, torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(model.logits, tlogits.detach().numpy(), rtol=1e-4, atol=2e-5)
    for name, g in grads.items():
        tg = tp[name].grad.numpy()
        err = np.abs(g - tg).max() / np.abs(tg).max()
        assert err < 1e-4, (name, err)


def test_ten_adamw_steps_match_torch():
    torch.set_num_threads(1)
    model, tp, x, y = make(seed=3)
    lr, betas, eps, wd = 1e-3, (0.9, 0.95), 1e-8, 0.1
    opt = torch_adamw(tp, lr, betas, eps, wd, foreach=False)
    m, v = np.zeros_like(model.params), np.zeros_like(model.params)
    tx, ty = torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long)
    ours, theirs = [], []
    for t in range(1, 11):
        ours.append(model.forward(x, y))
        g = model.backward()
        adamw_step(model.params, g, m, v, model.decay_mask, lr, betas[0], betas[1], eps, wd, t)
        opt.zero_grad()
        loss, _ = torch_loss(tp, CFG, tx, ty)
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < ours[0] - 0.05
    for name, arr in model.param_views().items():
        np.testing.assert_allclose(arr, tp[name].detach().numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
