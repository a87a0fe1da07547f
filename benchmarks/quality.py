"""Quality: the shakespeare-char preset (dropout 0.2) trained by crystalline and by PyTorch.

    timeout 1500 python benchmarks/quality.py [--steps 40] [--workers 2] [--eval-batches 4]

Both sides train nanoGPT's shakespeare-char recipe (C 384, 6 layers, 6 heads, T 256, dropout
0.2, batch 64, AdamW lr 1e-3 with beta2 0.99, weight decay 0.1, clipping at 1, warm-up then
cosine to 1e-4 over the run) on the bundled Tiny Shakespeare with the byte tokenizer (the text is
ASCII: one token per character), from the same initial parameters, on the same batches in the
same order:

  * ours: Trainer(workers=N).step(), the real engine (dropout masks from dropout_rng);
  * the reference: tests/test_torch_parity.torch_loss (nanoGPT's forward, F.dropout and
    scaled_dot_product_attention's dropout_p: PyTorch's own masks) with torch.optim.AdamW,
    torch.set_num_threads(N), the schedule written in tests/reference.py.

Steps alternate (one of ours, one of PyTorch's) so that load from other users hits both. Prints
the validation loss of both (the same held-out batches, no dropout) and the difference, and the
wall time of both. Target: ours <= the reference's + 0.02 nats.
"""

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from crystalline.config import preset, schedule_for_run  # noqa: E402
from crystalline.data.corpus import bundled_corpus  # noqa: E402
from crystalline.engine.optimizer import ADAM_EPS  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402

TARGET_NATS = 0.02


def torch_side(params, cfg, train_cfg, threads):
    """(step(x, y, lr) -> loss, val_loss(x, y) -> loss sum) for the PyTorch reference."""
    import torch
    from test_torch_parity import torch_adamw, torch_loss
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch_adamw(tp, train_cfg.learning_rate, (train_cfg.beta1, train_cfg.beta2), ADAM_EPS,
                      train_cfg.weight_decay)

    def step(x, y, lr):
        torch.set_num_threads(threads)       # every call: threadpoolctl limits OpenMP too
        for group in opt.param_groups:
            group["lr"] = lr
        loss, _ = torch_loss(tp, cfg, torch.from_numpy(x).long(), torch.from_numpy(y).long(),
                             dropout=cfg.dropout)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), train_cfg.grad_clip)
        opt.step()
        return loss.item()

    def val_loss(x, y):
        torch.set_num_threads(threads)
        with torch.no_grad():
            loss, _ = torch_loss(tp, cfg, torch.from_numpy(x).long(), torch.from_numpy(y).long())
        return loss.item()
    return step, val_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40, help="training steps of each side")
    ap.add_argument("--workers", type=int, default=2, help="our worker spheres = PyTorch's threads")
    ap.add_argument("--eval-batches", type=int, default=4, help="validation batches of 64 sequences")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch
    from reference import warmup_cosine
    torch.manual_seed(args.seed)
    model_cfg, train_cfg = preset("shakespeare-char")
    train_cfg = schedule_for_run(train_cfg.replace(seed=args.seed, eval_interval=0), args.steps)
    B, T = train_cfg.batch_size, model_cfg.block_size
    print(f"shakespeare-char: {args.steps} steps of {B} x {T} tokens, dropout {model_cfg.dropout}, "
          f"warm-up {train_cfg.warmup_steps}, cosine to {train_cfg.min_lr} at {train_cfg.max_steps}; "
          f"{args.workers} workers / torch threads; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    with Trainer(model_cfg, train_cfg, str(bundled_corpus()), workers=args.workers) as ours:
        cfg = ours.model_cfg
        print(f"{ours.model.num_parameters:,} parameters, vocabulary {cfg.vocab_size} "
              f"({ours.corpus.tokenizer.name}), {len(ours.corpus.tokens):,} tokens")
        torch_step, torch_val = torch_side(ours.model.param_views(), cfg, train_cfg, args.workers)
        x, y = np.empty((B, T), np.int32), np.empty((B, T), np.int32)
        seconds = {"crystalline": 0.0, "pytorch": 0.0}
        for s in range(args.steps):
            ours.batches.fill(s, 0, B, x, y)
            t = time.perf_counter()
            our_loss = ours.step().loss
            seconds["crystalline"] += time.perf_counter() - t
            t = time.perf_counter()
            their_loss = torch_step(x, y, warmup_cosine(s, train_cfg.learning_rate, train_cfg.min_lr,
                                                        train_cfg.warmup_steps, train_cfg.max_steps))
            seconds["pytorch"] += time.perf_counter() - t
            if s % 10 == 0 or s == args.steps - 1:
                print(f"step {s:4d}: train loss ours {our_loss:.4f}  pytorch {their_loss:.4f}", flush=True)
        ours_val = ours.evaluate(args.eval_batches)
        theirs = []
        for k in range(args.eval_batches):
            ours.val_batches.fill(k, 0, B, x, y)
            theirs.append(torch_val(x, y))
        theirs_val = float(np.mean(theirs))
    diff = ours_val - theirs_val
    print(f"\nvalidation loss ({args.eval_batches} x {B} x {T} held-out tokens, no dropout):")
    print(f"  crystalline {ours_val:.4f}   pytorch {theirs_val:.4f}   difference {diff:+.4f} nats "
          f"(target <= +{TARGET_NATS}: {'met' if diff <= TARGET_NATS else 'NOT met'})")
    print(f"wall time of {args.steps} training steps: crystalline {seconds['crystalline']:.0f} s, "
          f"pytorch {seconds['pytorch']:.0f} s ({seconds['pytorch'] / seconds['crystalline']:.2f}x)")


if __name__ == "__main__":
    main()
