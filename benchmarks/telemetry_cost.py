"""What telemetry in the run folder costs training: tokens/s (and the training process's CPU
seconds per step, steadier on a shared machine) with stats in memory, with the telemetry file,
and with the file plus another process reading it (open_run: snapshot and timeline at 5 Hz),
alternated round by round in one run; medians and ratios. Also the cost of one phase change
(PhaseClock.enter) in memory and in the memory-mapped file.

    timeout 900 python benchmarks/telemetry_cost.py [--workers 2] [--rounds 7] [--steps 8]
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crystalline.config import preset  # noqa: E402
from crystalline.data.corpus import bundled_corpus  # noqa: E402
from crystalline.engine.hierarchy import Hierarchy  # noqa: E402
from crystalline.engine.stats import SphereStats  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402

READER = """
import sys, time
from crystalline import open_run
run = open_run(sys.argv[1])
print("ready", flush=True)
while True:
    run.snapshot(); run.timeline(last=50)
    time.sleep(0.2)
"""


def phase_change_ns(path, n: int = 200_000) -> float:
    """Nanoseconds per PhaseClock.enter on one sphere (median of 5 runs of n calls)."""
    stats = SphereStats(Hierarchy.for_workers(2), path)
    clock, phases, runs = stats.clock(1), ("wait_a", "compute", "wait_b"), []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for i in range(n):
            clock.enter(phases[i % 3])
        runs.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(runs)


def tokens_per_s(trainer, steps: int, cpu: list | None = None) -> float:
    """Tokens/s over `steps` steps; appends this process's CPU seconds per step to `cpu`."""
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.run(steps, progress=False)
    if cpu is not None:
        cpu.append((time.process_time() - c0) / steps)
    return steps * trainer.tokens_per_step / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cllm-4.5m")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=8, help="steps per configuration per round")
    args = ap.parse_args()
    model_cfg, train_cfg = preset(args.preset)
    train_cfg = train_cfg.replace(batch_size=args.batch, eval_interval=0)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="telemetry-cost-"))
    print(f"{args.preset}, {args.workers} workers, batch {args.batch}; {args.rounds} rounds of "
          f"{args.steps} steps per configuration, alternated; run folder {tmp}")

    ns_memory, ns_file = phase_change_ns(None), phase_change_ns(tmp / "clock" / "telemetry-rank0.bin")
    print(f"one phase change: {ns_memory:.0f} ns in memory, {ns_file:.0f} ns in the file")

    corpus = str(bundled_corpus())
    memory = Trainer(model_cfg, train_cfg, corpus, workers=args.workers)
    filed = Trainer(model_cfg, train_cfg, corpus, workers=args.workers, run_dir=tmp / "run")
    for tr in (memory, filed):
        tr.run(2, progress=False)                        # compile and warm up
    changes = len(filed.timeline(last=1)["sphere"]) or 1
    step_s = filed.tokens_per_step / tokens_per_s(filed, 2)
    print(f"{changes} phase changes per step: {changes * ns_file / 1e3:.1f} us of a "
          f"{step_s * 1e3:.0f} ms step ({changes * ns_file * 1e-9 / step_s:.5%})")

    results = {"in memory": [], "file": [], "file + reader": []}
    reader_cpu = []              # the reader's CPU seconds per second of its round
    cpu = {name: [] for name in results}   # the training process's CPU seconds per step
    for r in range(args.rounds):
        order = list(results) if r % 2 == 0 else list(reversed(results))
        for name in order:
            reader = None
            if name == "file + reader":
                reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp / "run")],
                                          stdout=subprocess.PIPE, text=True)
                assert reader.stdout.readline().strip() == "ready"
            try:
                cpu0, t0 = (psutil.Process(reader.pid).cpu_times() if reader else None), time.perf_counter()
                results[name].append(tokens_per_s(memory if name == "in memory" else filed, args.steps,
                                                  cpu[name]))
                if reader is not None:
                    cpu1 = psutil.Process(reader.pid).cpu_times()
                    reader_cpu.append((cpu1.user + cpu1.system - cpu0.user - cpu0.system)
                                      / (time.perf_counter() - t0))
            finally:
                if reader is not None:
                    reader.kill()
                    reader.wait()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)

    base = statistics.median(results["in memory"])
    base_cpu = statistics.median(cpu["in memory"])
    print("\n| stats | tokens/s (median) | vs in memory | median of per-round ratios "
          "| CPU s per step (median) | vs in memory |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in results.items():
        ratios = [v / m for v, m in zip(values, results["in memory"])]
        print(f"| {name} | {statistics.median(values):,.0f} | {statistics.median(values) / base:.3f}x "
              f"| {statistics.median(ratios):.3f}x | {statistics.median(cpu[name]):.3f} "
              f"| {statistics.median(cpu[name]) / base_cpu:.3f}x |")
    print(f"\nthe reader process (snapshot + timeline at 5 Hz) used {statistics.median(reader_cpu):.2%} "
          "of a core (median over rounds)")
    memory.close()
    filed.close()


if __name__ == "__main__":
    main()
