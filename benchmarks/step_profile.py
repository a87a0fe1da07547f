"""Where a training step's time goes at one shape of the attention sweep (benchmarks/sweep.py).

    timeout 600 python benchmarks/step_profile.py ROW [--precision fp32|bf16]

Prints, for ROW of sweep.ROWS (C, L, NH, T, B):
  * one worker's forward and backward on its half of the batch (B / 2 sequences, one BLAS
    thread, the thread's CPU time, best of 5), and attention's forward and backward alone at
    that shape, times L: attention's share of the worker's work;
  * the phases of Trainer(workers=2).step() (TrainStep.timings, medians of 4 steps after one
    warm-up): hand-out, parallel (Point A to Point B), reduce, Node Zero's update, total.
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from crystalline.model.gpt import GPT  # noqa: E402
from crystalline.model.kernels.attention import attention_backward, attention_forward  # noqa: E402
from sweep import ROWS, model_config  # noqa: E402
from vs_pytorch import our_trainer  # noqa: E402


def best_ms(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        f()
        times.append(time.thread_time() - t)
    return 1e3 * min(times)


def worker(cfg, B, precision):
    """(forward ms, backward ms, attention forward ms, attention backward ms) of one worker."""
    C, NH, T = cfg.n_embd, cfg.n_head, cfg.block_size
    model = GPT(cfg, seed=0, precision=precision)
    ws = model.workspace(B)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32) for _ in range(2))
    grad = np.zeros_like(model.params)
    a = ws.shaped(cfg, B, T)
    dqkv = np.zeros((B * T, 3 * C), np.float32)
    with threadpool_limits(1):
        fwd = best_ms(lambda: model.forward_into(ws, x, y))
        both = best_ms(lambda: (model.forward_into(ws, x, y),
                                model.backward_into(ws, grad, accumulate=False)))
        att_f = best_ms(lambda: attention_forward(a["atty"][0], a["lse"][0], a["qkv"][0], B, T, C,
                                                  NH, a["att_scratch"]))
        att_b = best_ms(lambda: attention_backward(dqkv, a["atty"][0], a["qkv"][0], a["atty"][0],
                                                   a["lse"][0], B, T, C, NH, False,
                                                   a["att_scratch"]))
    return fwd, both - fwd, att_f, att_b


def phases(cfg, B, precision):
    """Median milliseconds of each phase of a 2-worker step."""
    with our_trainer(cfg, 2, B, precision) as trainer:
        trainer.step()
        steps = [trainer.step() for _ in range(4)]
    return {k: 1e3 * statistics.median(s.timings[k] for s in steps) for k in steps[0].timings}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", type=int, choices=range(len(ROWS)))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    cfg, B = model_config(args.row), ROWS[args.row][4]
    C, L, NH, T, _ = ROWS[args.row]
    print(f"C {C}, L {L}, NH {NH} (hs {C // NH}), T {T}, B {B}; {args.precision}; "
          f"{GPT(cfg).num_parameters / 1e6:.1f}M parameters")
    fwd, bwd, att_f, att_b = worker(cfg, B // 2, args.precision)
    print(f"one worker ({B // 2} sequences): forward {fwd:.1f} ms, backward {bwd:.1f} ms; "
          f"attention forward {att_f:.2f} x {L}, backward {att_b:.2f} x {L}: "
          f"{100 * L * (att_f + att_b) / (fwd + bwd):.0f}% of forward + backward")
    ph = phases(cfg, B, args.precision)
    print("2-worker step, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()) +
          f"; update {100 * ph['update'] / ph['total']:.0f}% of the step")


if __name__ == "__main__":
    main()
