"""The runs behind the figures: loss curves, scaling measurements and a per-sphere time split.

    losses = run_losses(cfg)                          # {workers: [loss per step]}
    runs = measure_scaling(cfg, [(1, "lock_free"), (2, "model_lock")])   # one subprocess each
    split = measure_split(cfg)                        # stats deltas + per-step group load

A scaling configuration runs in a fresh interpreter (`python -m crystalline.figures.measure`)
so its peak RSS is its own; `isolate=False` measures in this process instead (no peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from crystalline.errors import TrainingError

TIME_PARTS = ("compute_s", "wait_a_s", "wait_b_s", "reduce_s")


def _corpus():
    from crystalline.data.corpus import bundled_corpus, load_corpus
    return load_corpus(bundled_corpus())


def _trainer(preset_name: str, batch: int, seed: int, workers: int, sync: str = "lock_free",
             corpus=None):
    from crystalline.config import preset
    from crystalline.engine.trainer import Trainer
    model_cfg, train_cfg = preset(preset_name)
    train_cfg = train_cfg.replace(batch_size=batch, seed=seed, eval_interval=0)
    return Trainer(model_cfg, train_cfg, corpus if corpus is not None else _corpus(),
                   workers=workers, sync=sync)


def run_losses(cfg, on_done=None) -> dict[int, list[float]]:
    """Training loss per step of the same run on each of cfg.loss_workers worker counts."""
    corpus = _corpus()
    losses = {}
    for workers in cfg.loss_workers:
        with _trainer(cfg.loss_preset, cfg.loss_batch, cfg.seed, workers, corpus=corpus) as tr:
            losses[workers] = [r.loss for r in tr.run(cfg.loss_steps, progress=False)]
        if on_done:
            on_done(f"loss, {workers} workers")
    return losses


def measure_one(preset_name: str, batch: int, seed: int, workers: int, sync: str,
                steps: int) -> dict:
    """Tokens/s over `steps` steps after an untimed first step (the fastest step, the one least
    disturbed by other processes, and the median), the process's peak RSS, its RSS before the
    trainer existed, the design's bytes by component, and the share of the machine's CPU that
    other processes used while the steps were timed."""
    import psutil
    corpus = _corpus()
    with _trainer("tiny", 8, seed, 1, corpus=corpus) as warm:   # load compiled kernels first
        warm.step()
    baseline = psutil.Process().memory_info().rss
    with _trainer(preset_name, batch, seed, workers, sync, corpus=corpus) as tr:
        tr.step()
        busy, own, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        results = [tr.step() for _ in range(steps)]
        others = ((_busy_cpu_s() - busy) - (_own_cpu_s() - own)) / \
            ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        tree, active = tr._tree, [w for w in range(tr.workers) if tr._tree.counts[w]]
        design = {
            "params_bytes": tr.model.params.nbytes,
            "adamw_bytes": tr.optimizer.nbytes,
            "grads_bytes": sum(tree.grads[w].nbytes for w in active),
            "workspaces_bytes": sum(tree.workspaces[w].nbytes for w in active),
            "batches_bytes": sum(tree.inputs[w].nbytes + tree.targets[w].nbytes for w in active),
        }
        spheres, parameters = len(tr.hierarchy.spheres), tr.model.num_parameters
    return {"workers": workers, "sync": sync, "spheres": spheres, "parameters": parameters,
            "tokens_per_s": max(r.tokens_per_s for r in results),
            "tokens_per_s_median": statistics.median(r.tokens_per_s for r in results),
            "other_cpu_share": max(0.0, others),
            "peak_rss_bytes": _peak_rss(), "baseline_rss_bytes": baseline, **design}


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting for I/O)."""
    import psutil
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_cpu_s() -> float:
    import psutil
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)   # bytes on macOS, KiB on Linux


def measure_scaling(cfg, configs, isolate: bool = True, on_done=None) -> list[dict]:
    """measure_one for each (workers, sync) in `configs`, each in a fresh subprocess when
    `isolate` (peak RSS is then that configuration's own), else here (peak RSS is NaN)."""
    runs = []
    for workers, sync in configs:
        args = (cfg.scaling_preset, cfg.scaling_batch, cfg.seed, workers, sync, cfg.scaling_steps)
        if isolate:
            runs.append(_in_subprocess(*args))
        else:
            run = measure_one(*args)
            run["peak_rss_bytes"] = float("nan")
            runs.append(run)
        if on_done:
            on_done(f"{workers} workers, {sync}")
    return runs


def _in_subprocess(preset_name, batch, seed, workers, sync, steps) -> dict:
    cmd = [sys.executable, "-m", "crystalline.figures.measure", "--preset", preset_name,
           "--batch", str(batch), "--seed", str(seed), "--workers", str(workers),
           "--sync", sync, "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrainingError(f"measuring {workers} workers ({sync}) failed in its subprocess: "
                            f"{last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_split(cfg, on_step=None) -> dict:
    """One run on cfg.split_workers workers: per-sphere seconds per step in each part of the
    step (stats deltas after a first, untimed step) and per-step tokens/s of each group."""
    with _trainer(cfg.split_preset, cfg.split_batch, cfg.seed, cfg.split_workers) as tr:
        tr.step()
        before = tr.stats.snapshot()
        t0 = time.perf_counter()
        for _ in range(cfg.split_steps):
            tr.step()
            if on_step:
                on_step()
        wall = time.perf_counter() - t0
        after = tr.stats.snapshot()
        history = list(tr.history)[1:]
    n = cfg.split_steps
    return {
        "sphere_id": after["sphere_id"].tolist(), "role": after["role"].tolist(),
        "level": after["level"].tolist(), "group": after["group"].tolist(),
        "worker_index": after["worker_index"].tolist(),
        **{part: ((after[part] - before[part]) / n).tolist() for part in TIME_PARTS},
        "step": [r["step"] for r in history],
        "group_tokens_per_s": np.array([r["group_tokens_per_s"] for r in history]).tolist(),
        "seconds_per_step": wall / n,
    }


def measure_stragglers(preset_name: str, batch: int, seed: int, workers: int, factors,
                       rounds: int, mode: str = "sleep", corpus=None, on_done=None) -> list[dict]:
    """Tokens/s and barrier efficiency of one step with worker 0 slowed by each factor, static
    against dynamic balancing: `rounds` rounds, each running every (factor, balance) once, the
    order of the two balances swapped every round. One row per measured step."""
    corpus = corpus if corpus is not None else _corpus()
    trainers = {b: _trainer(preset_name, batch, seed, workers, corpus=corpus) for b in ("static", "dynamic")}
    rows = []
    try:
        for balance, tr in trainers.items():
            tr.set_balance(balance)
            tr.step()                               # compile, touch every buffer
        for r in range(rounds):
            for factor in factors:
                order = ("static", "dynamic") if (r + factors.index(factor)) % 2 == 0 \
                    else ("dynamic", "static")
                for balance in order:
                    tr = trainers[balance]
                    tr.set_stragglers({0: factor} if factor > 1 else {}, mode)
                    result = tr.step()
                    rows.append({"round": r, "workers": workers, "factor": factor,
                                 "balance": balance, "tokens_per_s": result.tokens_per_s,
                                 "efficiency": tr.history[-1]["efficiency"]})
            if on_done:
                on_done(f"stragglers, round {r + 1} of {rounds}")
    finally:
        for tr in trainers.values():
            tr.close()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Measure one scaling configuration; prints JSON.")
    p.add_argument("--preset", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--sync", default="lock_free")
    p.add_argument("--steps", type=int, required=True)
    a = p.parse_args(argv)
    print(json.dumps(measure_one(a.preset, a.batch, a.seed, a.workers, a.sync, a.steps)))


if __name__ == "__main__":
    main()
