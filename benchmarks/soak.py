"""Soak: train for a long while on many workers, watching memory and threads for leaks.

    python benchmarks/soak.py                         # cllm-4.5m, 63 workers, 10 minutes
    python benchmarks/soak.py --minutes 1 --preset tiny

Samples process RSS and the thread count every few seconds while training runs in the
background, then prints the RSS slope after warm-up (least squares, MB per minute), the thread
counts seen, and the steps done.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil

from crystalline import Trainer
from crystalline.config import preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cllm-4.5m")
    p.add_argument("--workers", type=int, default=63)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run ignored for the slope")
    args = p.parse_args()

    model_cfg, train_cfg = preset(args.preset)
    tr = Trainer(model_cfg, train_cfg.replace(batch_size=args.batch, eval_interval=0,
                                              max_steps=1_000_000), "data/tinyshakespeare.txt",
                 workers=args.workers)
    process = psutil.Process()
    tr.step()                                   # compile / load kernels before sampling
    start = time.time()
    tr.start()
    samples = []
    tick = threading.Event()
    while time.time() - start < args.minutes * 60 and tr.driver_error is None:
        samples.append((time.time() - start, process.memory_info().rss, threading.active_count(),
                        tr.steps_done))
        print(f"\r{samples[-1][0]:6.0f} s  RSS {samples[-1][1] / 2**20:8.1f} MB  threads "
              f"{samples[-1][2]:4d}  step {samples[-1][3]}", end="", flush=True)
        tick.wait(args.every)
    tr.stop()
    print()
    if tr.driver_error is not None:
        raise SystemExit(f"training failed: {tr.driver_error!r}")

    t, rss, threads, steps = (np.array(c, dtype=np.float64) for c in zip(*samples))
    after = t >= args.warmup * t[-1]
    slope = np.polyfit(t[after] / 60, rss[after] / 2**20, 1)[0]
    noise = np.std(rss[after] / 2**20)
    print(f"{args.preset}, {args.workers} workers, batch {args.batch}, {t[-1] / 60:.1f} min, "
          f"{len(samples)} samples")
    print(f"steps done: {int(steps[-1]) + 1} ({(steps[-1] + 1) / t[-1]:.2f} steps/s)")
    print(f"RSS: {rss[after][0] / 2**20:.1f} MB after warm-up -> {rss[-1] / 2**20:.1f} MB at the end; "
          f"slope {slope:+.2f} MB/min (noise sd {noise:.2f} MB)")
    print(f"threads: min {int(threads.min())}, max {int(threads.max())} "
          f"({len(tr.hierarchy.spheres)} spheres + main + driver)")
    print(f"threads after stop: {threading.active_count()}")


if __name__ == "__main__":
    main()
