"""Scaling of the sphere tree on this machine: tokens/s against worker count, lock-free against
model_lock, the share of a step outside forward/backward, and peak RSS against the design's bytes.

    python benchmarks/scaling.py                 # cllm-4.5m, batch 64 x 128, 3 rounds
    python benchmarks/scaling.py --preset tiny --rounds 1 --steps 2    # a quick look

Each configuration runs in a fresh subprocess (so its peak RSS is its own); configurations are
alternated within each round and the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

WORKER_COUNTS = (1, 2, 4, 12, 63, 144)


def child(preset_name: str, workers: int, sync: str, steps: int, batch: int) -> dict:
    """Measure one configuration in this process; returns the figures as a dict."""
    import numpy as np
    import psutil

    from crystalline import Trainer
    from crystalline.config import preset
    from crystalline.data.corpus import bundled_corpus, load_corpus
    from crystalline.engine.stats import FIELD

    model_cfg, train_cfg = preset(preset_name)
    train_cfg = train_cfg.replace(batch_size=batch, eval_interval=0)
    corpus = load_corpus(bundled_corpus())
    warm = Trainer(*preset("tiny"), corpus, workers=1)   # load compiled kernels before the baseline
    warm.step()
    warm.close()
    del warm
    baseline = psutil.Process().memory_info().rss

    t0 = time.perf_counter()
    tr = Trainer(model_cfg, train_cfg, corpus, workers=workers, sync=sync)
    first = tr.step()
    first_s = time.perf_counter() - t0
    before = tr.stats.snapshot()
    results = [tr.step() for _ in range(steps)]
    after = tr.stats.snapshot()
    wall = sum(r.seconds for r in results)
    workers_mask = (after["role"] == "worker") & (after["tokens"] > before["tokens"])
    compute = (after["compute_s"] - before["compute_s"])[workers_mask].mean()
    tree = tr._tree
    design = (tr.model.params.nbytes + tr.optimizer.nbytes
              + sum(tree.grads[w].nbytes + tree.workspaces[w].nbytes + tree.inputs[w].nbytes * 2
                    for w in range(len(tree.counts)) if tree.counts[w]))
    groups = np.bincount(after["group"][workers_mask],
                         weights=(after["tokens"] - before["tokens"])[workers_mask], minlength=12)
    tr.close()
    return {"workers": workers, "sync": sync, "spheres": len(tr.hierarchy.spheres),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in results),
            "outside_share": 1.0 - compute / wall, "first_step_s": first_s, "first_loss": first.loss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "baseline_rss": baseline, "design_bytes": design,
            "parameters": tr.model.num_parameters}


def run_child(args, workers: int, sync: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--workers", str(workers),
           "--sync", sync, "--steps", str(args.steps), "--batch", str(args.batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cllm-4.5m")
    p.add_argument("--batch", type=int, default=64, help="sequences per global step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="*", default=list(WORKER_COUNTS))
    p.add_argument("--sync", default="lock_free")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.preset, args.workers[0], args.sync, args.steps, args.batch)))
        return

    from tqdm import tqdm
    configs = [(w, "lock_free") for w in args.workers] + [(2, "model_lock")]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    with tqdm(total=args.rounds * len(configs), unit="run") as bar:
        for _ in range(args.rounds):
            for c in configs:
                bar.set_postfix(workers=c[0], sync=c[1])
                runs[c].append(run_child(args, *c))
                bar.update(1)

    def med(c, key):
        return statistics.median(r[key] for r in runs[c])

    one = med((1, "lock_free"), "tokens_per_s") if (1, "lock_free") in runs else float("nan")
    two = med((2, "lock_free"), "tokens_per_s")
    print(f"\n{args.preset}, batch {args.batch} x block, {args.steps} steps x {args.rounds} rounds, medians")
    print(f"{'workers':>8} {'sync':>10} {'spheres':>8} {'tokens/s':>9} {'vs 1':>6} {'vs 2':>6} "
          f"{'outside':>8} {'peak RSS MB':>12} {'design+base MB':>15} {'ratio':>6}")
    for c in configs:
        rss, design, base = med(c, "peak_rss"), med(c, "design_bytes"), med(c, "baseline_rss")
        tps = med(c, "tokens_per_s")
        print(f"{c[0]:>8} {c[1]:>10} {runs[c][0]['spheres']:>8} {tps:>9,.0f} {tps / one:>6.2f} "
              f"{tps / two:>6.2f} {med(c, 'outside_share'):>8.1%} {rss / 2**20:>12,.0f} "
              f"{(design + base) / 2**20:>15,.0f} {rss / (design + base):>6.2f}")
    lock = med((2, "model_lock"), "tokens_per_s")
    print(f"\nlock_free / model_lock at 2 workers: {two / lock:.2f}x")
    print(f"2 workers / 1 worker: {two / one:.2f}x")
    if (63, "lock_free") in runs:
        print(f"63 workers / 2 workers: {med((63, 'lock_free'), 'tokens_per_s') / two:.2f}x")
    print(f"outside-compute share at 2 workers: {med((2, 'lock_free'), 'outside_share'):.1%}")


if __name__ == "__main__":
    main()
