"""Quality with dropout over several seeds, on a model small enough to train 150 steps in seconds.

    python benchmarks/quality_seeds.py [--dropout 0.2] [--seeds 3,4,5,6,7,8]

benchmarks/quality.py's comparison (same initial parameters, same batches, the PyTorch
reference with its own dropout masks) at C 64, 2 layers, 2 heads, T 64, batch 16, lr 3e-3,
150 steps, 1 worker / 1 thread, one line per seed: the validation loss of both (16 held-out
batches) and the difference. One seed's difference is mostly which side leaves the unigram
plateau first; the spread over seeds says whether a gap is systematic. At --dropout 0 the two
sides track each other to about 1e-4 (the control).
"""

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from crystalline.config import ModelConfig, TrainConfig  # noqa: E402
from crystalline.data.corpus import bundled_corpus  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402
from quality import torch_side  # noqa: E402
from reference import warmup_cosine  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seeds", default="3,4,5,6,7,8")
    args = ap.parse_args()
    import torch
    model_cfg = ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=args.dropout)
    diffs = []
    for seed in map(int, args.seeds.split(",")):
        torch.manual_seed(seed)
        cfg = TrainConfig(batch_size=16, learning_rate=3e-3, min_lr=3e-4, warmup_steps=10,
                          max_steps=150, eval_interval=0, seed=seed, beta2=0.99)
        with Trainer(model_cfg, cfg, str(bundled_corpus()), workers=1) as ours:
            step, val_loss = torch_side(ours.model.param_views(), ours.model_cfg, cfg, 1)
            B, T = cfg.batch_size, model_cfg.block_size
            x, y = np.empty((B, T), np.int32), np.empty((B, T), np.int32)
            for s in range(cfg.max_steps):
                ours.batches.fill(s, 0, B, x, y)
                ours.step()
                step(x, y, warmup_cosine(s, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_steps))
            mine = ours.evaluate(16)
            theirs = []
            for k in range(16):
                ours.val_batches.fill(k, 0, B, x, y)
                theirs.append(val_loss(x, y))
        diffs.append(mine - np.mean(theirs))
        print(f"dropout {args.dropout} seed {seed}: crystalline {mine:.4f}  pytorch "
              f"{np.mean(theirs):.4f}  difference {diffs[-1]:+.4f}", flush=True)
    print(f"mean difference {np.mean(diffs):+.4f} nats over {len(diffs)} seeds "
          f"(standard error {np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.4f})" if len(diffs) > 1 else "")


if __name__ == "__main__":
    main()
