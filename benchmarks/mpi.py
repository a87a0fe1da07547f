"""MPI ranks against threads on one machine, and what the all-reduce would cost on a network.

    python benchmarks/mpi.py                          # cllm-4.5m, batch 16 x 128, 3 rounds x 5 steps
    python benchmarks/mpi.py --preset tiny --rounds 1 --steps 3     # a quick look

Measures tokens/s of 2 ranks x 1 worker (mpiexec -n 2, DistributedTrainer) against 1 process x
2 workers (Trainer), each configuration in fresh processes, alternated within each round;
tables show medians over rounds. For the ranks it splits a step into compute, waiting for the
other rank at the barrier before the all-reduce, and the all-reduce itself, and times a bare
all-reduce of the gradient (ranks lined up by a barrier first).

It then prints a paper estimate for R ranks on 10/25/100 Gbit/s networks: a ring all-reduce
sends and receives 2(R-1)/R of the gradient bytes (4 bytes x parameters) per rank, in 2(R-1)
messages of latency ALPHA_S each, against the measured compute time of a step, for a fixed
per-rank batch (weak scaling: the global batch grows with R) and for the fixed global batch
(strong scaling: per-rank compute shrinks as 1/R, R <= batch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ALPHA_S = 25e-6           # one message's latency on a TCP Ethernet network (RDMA: ~2 us)
NETWORKS_GBIT = (10, 25, 100)
EFFICIENCY_FLOOR = 0.9    # "stops scaling" once the all-reduce takes > 10% of the step
RANK_COUNTS = (2, 4, 8, 16, 64, 256, 1024)


def child(mode: str, preset_name: str, steps: int, batch: int) -> dict | None:
    """Measure one configuration in this process (every rank of it, under mpiexec)."""
    import time

    import numpy as np

    from crystalline.config import preset
    from crystalline.data.corpus import bundled_corpus, load_corpus
    from crystalline.engine.trainer import Trainer

    model_cfg, train_cfg = preset(preset_name)
    train_cfg = train_cfg.replace(batch_size=batch, eval_interval=0)
    corpus = load_corpus(bundled_corpus())
    if mode == "ranks":
        from mpi4py import MPI

        from crystalline.distributed import DistributedTrainer
        tr = DistributedTrainer(model_cfg, train_cfg, corpus, workers=1, check_every=0)
    else:
        tr = Trainer(model_cfg, train_cfg, corpus, workers=2)
    tr.step()                                   # warm: compiled kernels, first touch of buffers
    results = [tr.step() for _ in range(steps)]
    out = {"mode": mode, "parameters": tr.model.num_parameters,
           "tokens_per_s": statistics.median(r.tokens_per_s for r in results),
           "step_s": statistics.median(r.seconds for r in results)}
    if mode == "ranks":
        out["rank_wait_s"] = statistics.median(r.timings["rank_wait"] for r in results)
        out["allreduce_s"] = statistics.median(r.timings["allreduce"] for r in results)
        out["compute_s"] = statistics.median(r.seconds - r.timings["rank_wait"] - r.timings["allreduce"]
                                             for r in results)
        comm, grad = tr.comm, np.ones(tr.model.num_parameters, dtype=np.float32)
        bare = []
        for _ in range(10):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
            bare.append(time.perf_counter() - t0)
        out["bare_allreduce_s"] = statistics.median(bare)
    tr.close()
    return out if mode == "threads" or tr.is_root else None


def run_child(args, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset, "--steps", str(args.steps),
           "--batch", str(args.batch)]
    if mode == "ranks":
        mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
        cmd = [mpiexec, "-n", "2"] + cmd[:1] + ["-m", "mpi4py"] + cmd[1:]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def allreduce_estimate_s(ranks: int, gradient_bytes: float, gbit: float) -> float:
    """Ring all-reduce: 2(R-1)/R of the bytes over the link, plus 2(R-1) message latencies."""
    return 2 * (ranks - 1) / ranks * gradient_bytes * 8 / (gbit * 1e9) + 2 * (ranks - 1) * ALPHA_S


def print_estimate(parameters: int, compute_s: float, batch: int) -> None:
    grad_bytes = 4 * parameters
    per_rank = batch // 2
    print(f"\nPaper estimate: gradient {grad_bytes / 1e6:.1f} MB ({parameters:,} float32), ring all-reduce, "
          f"{ALPHA_S * 1e6:.0f} us per message; compute per step {compute_s * 1e3:.0f} ms for "
          f"{per_rank} sequences per rank (measured, 1 worker per rank)")
    head = "R".rjust(6) + "".join(f"{f'{g} Gbit/s':>22}" for g in NETWORKS_GBIT)
    for title, compute_of in (
            (f"weak scaling: {per_rank} sequences per rank (global batch {per_rank} x R); "
             "all-reduce ms (share of step)", lambda r: compute_s),
            (f"strong scaling: global batch {batch} fixed (compute shrinks as 1/R); "
             "all-reduce ms (share of step)", lambda r: compute_s * 2 / r)):
        print(f"\n{title}\n{head}")
        limits, shown = {}, [r for r in RANK_COUNTS if "strong" not in title or r <= batch]
        for r in shown:
            cells = []
            for g in NETWORKS_GBIT:
                t = allreduce_estimate_s(r, grad_bytes, g)
                share = t / (t + compute_of(r))
                if share > 1 - EFFICIENCY_FLOOR and g not in limits:
                    limits[g] = r
                cells.append(f"{t * 1e3:9.1f} ({share:5.1%})")
            print(f"{r:>6}" + "".join(f"{c:>22}" for c in cells))
        for g in NETWORKS_GBIT:
            where = f"from R = {limits[g]}" if g in limits else f"not up to R = {shown[-1]}"
            print(f"  {g} Gbit/s: all-reduce above {1 - EFFICIENCY_FLOOR:.0%} of the step {where}")
    ratio = EFFICIENCY_FLOOR / (1 - EFFICIENCY_FLOOR)
    print(f"\nCompute per step each rank needs for the all-reduce to stay within {1 - EFFICIENCY_FLOOR:.0%} "
          f"(= {ratio:.0f} x all-reduce time):")
    for g in NETWORKS_GBIT:
        need = ", ".join(f"R={r}: {ratio * allreduce_estimate_s(r, grad_bytes, g) * 1e3:.0f} ms"
                         for r in (8, 64, 1024))
        print(f"  {g:>3} Gbit/s: {need}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cllm-4.5m")
    p.add_argument("--batch", type=int, default=16, help="sequences per global step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=["ranks", "threads"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.preset, args.steps, args.batch)
        if result is not None:
            print(json.dumps(result))
        return

    runs = {"ranks": [], "threads": []}
    load_before = os.getloadavg()[0]
    for k in range(args.rounds):
        for mode in (("ranks", "threads") if k % 2 == 0 else ("threads", "ranks")):
            runs[mode].append(run_child(args, mode))
    med = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "mode"}
           for mode, rs in runs.items()}
    ranks, threads = med["ranks"], med["threads"]
    print(f"{args.preset}, batch {args.batch} x block, {args.rounds} rounds x {args.steps} steps "
          "(medians)\n")
    print(f"{'configuration':<28}{'tokens/s':>10}{'step ms':>10}")
    print(f"{'1 process x 2 workers':<28}{threads['tokens_per_s']:>10,.0f}{threads['step_s'] * 1e3:>10.1f}")
    print(f"{'2 ranks x 1 worker (MPI)':<28}{ranks['tokens_per_s']:>10,.0f}{ranks['step_s'] * 1e3:>10.1f}")
    print(f"ranks / threads: {ranks['tokens_per_s'] / threads['tokens_per_s']:.2f}x")
    for mode, rs in runs.items():
        print(f"  {mode} tokens/s by round: " + ", ".join(f"{r['tokens_per_s']:,.0f}" for r in rs))
    load_after = os.getloadavg()[0]
    print(f"  1-minute load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} CPUs)"
          + (": above the CPU count, other processes share the cores"
             if max(load_before, load_after) > os.cpu_count() else ""))
    step = ranks["step_s"]
    print(f"\n2-rank step on rank 0: compute {ranks['compute_s'] * 1e3:.1f} ms, waiting for rank 1 "
          f"{ranks['rank_wait_s'] * 1e3:.1f} ms ({ranks['rank_wait_s'] / step:.1%}), all-reduce "
          f"{ranks['allreduce_s'] * 1e3:.2f} ms ({ranks['allreduce_s'] / step:.1%}); bare all-reduce of "
          f"the gradient {ranks['bare_allreduce_s'] * 1e3:.2f} ms (shared memory)")
    print_estimate(int(ranks["parameters"]), ranks["compute_s"], args.batch)


if __name__ == "__main__":
    main()
