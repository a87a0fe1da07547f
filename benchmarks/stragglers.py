"""What a straggler costs at Point B, and how much dynamic balancing wins back.

    python benchmarks/stragglers.py                       # cllm-4.5m, batch 64, 2 and 12 workers
    python benchmarks/stragglers.py --preset tiny --rounds 2 --workers 2    # a quick look
    python benchmarks/stragglers.py --mode busy           # the straggler spins instead of sleeping

Worker 0 is slowed by each factor (after each forward+backward it waits factor - 1 times the
time it computed). Each round runs one step of every (factor, balance) pair, swapping the order
of static and dynamic every time, so both see the same load from other processes; the table
shows medians over rounds, the median of the per-round dynamic/static ratios and their range.
It also times SharedChunks.take(), the only thing a dynamic worker does between two chunks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

FACTORS = (1.0, 1.5, 2.0, 4.0)


def time_take(n: int = 200_000) -> tuple[float, float]:
    """Nanoseconds per SharedChunks.take(): one thread alone, and two threads contending."""
    from crystalline.engine.balance import SharedChunks
    chunks = SharedChunks(0, 2 * n, 2 * n)     # as many workers as sequences: n chunks of 2
    t0 = time.perf_counter()
    for _ in range(n):
        chunks.take()
    alone = (time.perf_counter() - t0) / n * 1e9
    chunks.reset()
    taken: list[list[int]] = [[], []]

    def worker(i):
        while (k := chunks.take()) >= 0:
            taken[i].append(k)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    contended = (time.perf_counter() - t0) / n * 1e9
    got = sorted(taken[0] + taken[1])
    assert got == list(range(chunks.n_chunks)), "a chunk was taken twice or lost"
    return alone, contended


def summarise(rows: list[dict], workers: int, factor: float) -> dict:
    def of(balance, key):
        return [r[key] for r in rows if r["workers"] == workers and r["factor"] == factor
                and r["balance"] == balance]
    static, dynamic = of("static", "tokens_per_s"), of("dynamic", "tokens_per_s")
    ratios = [d / s for s, d in zip(static, dynamic)]
    return {"workers": workers, "factor": factor,
            "static": statistics.median(static), "dynamic": statistics.median(dynamic),
            "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios),
            "eff_static": statistics.median(of("static", "efficiency")),
            "eff_dynamic": statistics.median(of("dynamic", "efficiency"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cllm-4.5m")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1, 12])
    p.add_argument("--factors", type=float, nargs="+", default=list(FACTORS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mode", choices=["sleep", "busy"], default="sleep")
    a = p.parse_args()
    from crystalline.figures.measure import _corpus, measure_stragglers

    alone, contended = time_take()
    print(f"SharedChunks.take(): {alone:.0f} ns alone, {contended:.0f} ns per chunk with 2 threads "
          "contending")
    print(f"{a.preset}, batch {a.batch}, straggler = worker 0 ({a.mode}), {a.rounds} rounds, "
          f"{os.cpu_count()} cores (machine shared with other users: read the ratio's range)")
    corpus = _corpus()
    rows = []
    for workers in a.workers:
        rows += measure_stragglers(a.preset, a.batch, 0, workers, list(a.factors), a.rounds,
                                   a.mode, corpus=corpus,
                                   on_done=lambda what, w=workers: print(f"  {w} workers: {what}",
                                                                         flush=True))
    print("\n| workers | factor | static tok/s | dynamic tok/s | dynamic / static (range) "
          "| efficiency static | efficiency dynamic |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers in a.workers:
        for factor in a.factors:
            s = summarise(rows, workers, factor)
            print(f"| {workers} | {factor:g} | {s['static']:,.0f} | {s['dynamic']:,.0f} | "
                  f"{s['ratio']:.2f}x ({s['lo']:.2f}-{s['hi']:.2f}) | {s['eff_static']:.0%} | "
                  f"{s['eff_dynamic']:.0%} |")


if __name__ == "__main__":
    main()
