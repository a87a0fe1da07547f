"""Quality of precision="bf16": the nanoGPT CPU recipe trained in fp32 and in bf16, validation loss
of both at the end (target: bf16 within 0.02 nats of fp32).

    timeout 3000 python benchmarks/bf16_quality.py [--steps 2000] [--workers 2]

The recipe (nanoGPT's README, "I only have a macbook"): n_layer 4, n_head 4, n_embd 128,
block_size 64, batch_size 12, 2,000 iterations, learning rate 1e-3 decaying to 1e-4 over them,
100 warm-up steps, beta2 0.99, no dropout; Tiny Shakespeare with our byte tokenizer (nanoGPT's is
by character). Both runs use the same seed, so they see the same batches; the validation loss is
the mean over the same 50 held-out batches.
"""

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from crystalline.config import ModelConfig, TrainConfig  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402

CORPUS = ROOT / "data" / "tinyshakespeare.txt"


def train(precision: str, steps: int, workers: int, eval_batches: int) -> tuple[float, float, float]:
    """(final training loss, validation loss, seconds) of one run."""
    model = ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128)
    cfg = TrainConfig(batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                      max_steps=steps, beta2=0.99, eval_interval=0, eval_batches=eval_batches,
                      precision=precision)
    with Trainer(model, cfg, str(CORPUS), workers=workers) as tr:
        t = time.perf_counter()
        results = tr.run(steps, progress=False)
        seconds = time.perf_counter() - t
        last = sum(r.loss for r in results[-50:]) / len(results[-50:])
        return last, tr.evaluate(), seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-batches", type=int, default=50)
    args = ap.parse_args()
    val = {}
    for precision in ("fp32", "bf16"):
        last, val[precision], seconds = train(precision, args.steps, args.workers, args.eval_batches)
        print(f"{precision}: {args.steps} steps in {seconds:.0f} s; training loss (last 50 steps) "
              f"{last:.4f}; validation loss {val[precision]:.4f}", flush=True)
    gap = val["bf16"] - val["fp32"]
    print(f"bf16 - fp32 validation loss: {gap:+.4f} nats (target: |gap| <= 0.02: "
          f"{'met' if abs(gap) <= 0.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
