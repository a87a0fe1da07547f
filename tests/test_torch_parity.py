"""The same GPT built in PyTorch from our flat parameters: loss, every gradient, and ten AdamW
steps' losses must agree (llm.c's test_gpt2, asserting), at every head size the attention's
register tiles are built for (16, 32, 64, 128) and a padded one (8). A Trainer's steps are
checked against torch.optim.AdamW with a schedule written here. Skipped where torch is not
installed (a failure in CI: see conftest.py)."""

import math

import numpy as np
import pytest

from reference import warmup_cosine   # the schedule, written in the tests

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crystalline.config import ModelConfig  # noqa: E402
from crystalline.model.gpt import GPT  # noqa: E402
from crystalline.model.kernels.adamw import adamw_step  # noqa: E402

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)   # hs 8
# One config per head size: the tiles' 16, 32, 64, 128 and a padded 8; T a multiple of 16 or not.
PATHS = {
    "hs8": CFG,
    "hs16-T24": ModelConfig(vocab_size=64, block_size=24, n_layer=2, n_head=2, n_embd=32),
    "hs16-T32": ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32),
    "hs32-T16": ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=64),
    "hs64-T21": ModelConfig(vocab_size=64, block_size=21, n_layer=2, n_head=2, n_embd=128),
    "hs128-T19": ModelConfig(vocab_size=64, block_size=19, n_layer=1, n_head=2, n_embd=256),
}
# The README's list of tensors under weight decay, written out here (not imported from the code).
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def torch_loss(p, cfg, idx, targets, dropout=0.0):
    """nanoGPT's forward written over a dict of leaf tensors with our names and shapes; dropout:
    its drop probability in training (embeddings, attention, both residual branches)."""
    B, T = idx.shape
    C, NH = cfg.n_embd, cfg.n_head
    drop = (lambda t: F.dropout(t, dropout)) if dropout > 0 else (lambda t: t)
    x = drop(p["wte"][idx] + p["wpe"][:T])
    for l in range(cfg.n_layer):
        h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], 1e-5)
        q, k, v = F.linear(h, p["qkvw"][l], p["qkvb"][l]).split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + drop(F.linear(y, p["attprojw"][l], p["attprojb"][l]))
        h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], 1e-5)
        h = F.gelu(F.linear(h, p["fcw"][l], p["fcb"][l]), approximate="tanh")
        x = x + drop(F.linear(h, p["fcprojw"][l], p["fcprojb"][l]))
    logits = F.linear(F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], 1e-5), p["wte"])
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)), logits


def torch_adamw(tp, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw):
    """torch.optim.AdamW over `tp` with the README's decay groups (DECAYED above)."""
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


def make(seed=0, cfg=CFG):
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    p = model.param_views()
    for name in ("ln1w", "ln1b", "ln2w", "ln2b", "lnfw", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        p[name][...] += rng.normal(0, 0.1, p[name].shape)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    data = np.random.default_rng(seed + 2).integers(0, cfg.vocab_size, (4, cfg.block_size + 1))
    return model, tp, data[:, :-1].astype(np.int32), data[:, 1:].astype(np.int32)


@pytest.mark.parametrize("path", PATHS)
def test_loss_logits_and_every_gradient_match_torch(path):
    torch.set_num_threads(1)
    cfg = PATHS[path]
    model, tp, x, y = make(cfg=cfg)
    loss = model.forward(x, y)
    grads = model.param_views(model.backward())
    tloss, tlogits = torch_loss(tp, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(model.logits, tlogits.detach().numpy(), rtol=1e-4, atol=2e-5)
    for name, g in grads.items():
        tg = tp[name].grad.numpy()
        err = np.abs(g - tg).max() / np.abs(tg).max()
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("path", ["hs8", "hs16-T32", "hs32-T16", "hs64-T21"])
def test_ten_adamw_steps_match_torch(path):
    torch.set_num_threads(1)
    cfg = PATHS[path]
    model, tp, x, y = make(seed=3, cfg=cfg)
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
        loss, _ = torch_loss(tp, cfg, tx, ty)
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < ours[0] - 0.05
    for name, arr in model.param_views().items():
        np.testing.assert_allclose(arr, tp[name].detach().numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_decay_mask_is_the_readmes_list():
    mask = GPT(CFG, seed=0).param_views(GPT(CFG, seed=0).decay_mask)
    assert {name for name, arr in mask.items() if np.all(arr == 1.0)} == set(DECAYED)
    assert {name for name, arr in mask.items() if np.all(arr == 0.0)} == set(mask) - set(DECAYED)


def test_weight_decay_alone_matches_torch():
    """A zero gradient leaves decay as the only change: decayed tensors shrink by 1 - lr * wd,
    the others stay put, and torch.optim.AdamW agrees tensor by tensor."""
    torch.set_num_threads(1)
    model, tp, _, _ = make(seed=5)
    lr, wd = 0.1, 0.5
    before = {k: v.copy() for k, v in model.param_views().items()}
    opt = torch_adamw(tp, lr, (0.9, 0.95), 1e-8, wd, foreach=False)
    for t in range(1, 4):
        g = np.zeros_like(model.params)
        adamw_step(model.params, g, np.zeros_like(g), np.zeros_like(g), model.decay_mask, lr,
                   0.9, 0.95, 1e-8, wd, t)
        for tensor in tp.values():
            tensor.grad = torch.zeros_like(tensor)
        opt.step()
    for name, arr in model.param_views().items():
        factor = (1 - lr * wd) ** 3 if name in DECAYED else 1.0
        np.testing.assert_allclose(arr, before[name] * factor, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(arr, tp[name].detach().numpy(), rtol=1e-6, err_msg=name)


# ---- a Trainer's steps against torch.optim.AdamW and a schedule written here ------------------

@pytest.fixture(scope="module")
def trainer_and_torch_steps(shakespeare):
    """Seven steps of a 3-worker Trainer (tiny preset: head size 16, the register-tile path) and of
    torch.optim.AdamW from the same initial parameters on the same global batches, with clipping,
    large weight decay (so dropping it shows) and a schedule covering warm-up, cosine and floor."""
    from crystalline import Trainer
    from crystalline.config import preset
    torch.set_num_threads(1)
    model_cfg, train_cfg = preset("tiny")
    train_cfg = train_cfg.replace(batch_size=12, eval_interval=0, learning_rate=3e-3, min_lr=3e-4,
                                  warmup_steps=2, max_steps=6, weight_decay=1.0, grad_clip=1.5)
    peak, floor, warmup, total = 3e-3, 3e-4, 2, 6
    steps = 7
    with Trainer(model_cfg, train_cfg, shakespeare, workers=3) as tr:
        cfg = tr.model_cfg
        tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in tr.model.param_views().items()}
        opt = torch_adamw(tp, peak, (train_cfg.beta1, train_cfg.beta2), 1e-8, 1.0, foreach=False)
        B, T = train_cfg.batch_size, cfg.block_size
        ours, theirs = [], []
        for s in range(steps):
            x, y = np.empty((B, T), np.int32), np.empty((B, T), np.int32)
            tr.batches.fill(s, 0, B, x, y)
            before = {k: v.copy() for k, v in tr.model.param_views().items()}
            result = tr.step()
            ours.append((result, {k: v - before[k] for k, v in tr.model.param_views().items()}))
            lr = warmup_cosine(s, peak, floor, warmup, total)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, _ = torch_loss(tp, cfg, torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(list(tp.values()), train_cfg.grad_clip).item()
            torch_before = {k: t.detach().numpy().copy() for k, t in tp.items()}
            opt.step()
            theirs.append((loss.item(), norm, lr, {k: t.detach().numpy() - torch_before[k]
                                                   for k, t in tp.items()}))
        history = list(tr.history)
    return ours, theirs, history


def test_trainer_loss_and_gradient_norm_match_torch(trainer_and_torch_steps):
    """The reported loss is the batch's mean loss and the reported norm the mean-loss gradient's:
    a gradient or loss divided by a wrong token count (even 5% off) fails here."""
    ours, theirs, history = trainer_and_torch_steps
    for s, ((result, _), (loss, norm, _, _)) in enumerate(zip(ours, theirs)):
        assert result.step == s and not result.skipped
        assert result.loss == pytest.approx(loss, rel=1e-5), s
        assert result.grad_norm == pytest.approx(norm, rel=1e-4), s
        assert history[s]["loss"] == result.loss and history[s]["grad_norm"] == result.grad_norm
    norms = [norm for _, norm, _, _ in theirs]
    assert max(norms) > 1.5 > min(norms), norms      # clipping both acts and stays out of the way


def test_trainer_schedule_matches_the_schedule_written_here(trainer_and_torch_steps):
    ours, theirs, history = trainer_and_torch_steps
    lrs = [lr for _, _, lr, _ in theirs]
    assert lrs[:3] == [1.5e-3, 3e-3, 3e-3] and lrs[-1] == 3e-4      # warm-up, peak, floor
    for s, (result, _) in enumerate(ours):
        assert result.lr == pytest.approx(lrs[s], rel=1e-12), s
        assert history[s]["lr"] == result.lr


def test_trainer_updates_match_torch_adamw_tensor_by_tensor(trainer_and_torch_steps):
    """Each step's change of every tensor (clipped gradient, schedule, decay mask) against
    torch.optim.AdamW's change on the same batch from the same parameters."""
    ours, theirs, _ = trainer_and_torch_steps
    for s, ((_, delta), (_, _, lr, torch_delta)) in enumerate(zip(ours, theirs)):
        for name, d in delta.items():
            td = torch_delta[name]
            err = np.abs(d - td).max() / np.abs(td).max()
            assert err < 2e-2, (s, name, err)
            assert np.abs(d - td).mean() < 1e-3 * np.abs(td).mean() + 1e-3 * lr, (s, name)
