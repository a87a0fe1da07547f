"""What one sequence per worker costs, apart from the engine: forward + backward of cllm-4.5m on
64 sequences of 128 tokens, one BLAS thread per Python thread, each thread into its own
workspace and gradient row (the engine's work without barriers or reduction):

    python benchmarks/one_sequence.py [--rounds 5]

  2 threads x 32-sequence calls   the 2-worker engine's shape
  2 threads x 32 one-sequence calls   one sequence per call, still 2 threads
  64 threads x one sequence        one sequence per thread, 64 threads on the machine's cores

The three alternate round by round; medians of tokens/s and the ratios to the first.
"""

import argparse
import pathlib
import statistics
import sys
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crystalline.config import preset  # noqa: E402
from crystalline.model.gpt import GPT  # noqa: E402

SEQUENCES = 64


def runner(model, threads: int, per_call: int, x, y):
    """A callable running one round: `threads` threads, each calling forward + backward on its
    share of the sequences `per_call` at a time; returns tokens/s."""
    share = SEQUENCES // threads
    workspaces = [model.workspace(per_call) for _ in range(threads)]
    grads = np.zeros((threads, model.num_parameters), np.float32)

    def work(i, start):
        start.wait()
        for s in range(i * share, (i + 1) * share, per_call):
            model.forward_into(workspaces[i], x[s:s + per_call], y[s:s + per_call])
            model.backward_into(workspaces[i], grads[i], 1.0, accumulate=False)

    def one_round() -> float:
        start = threading.Barrier(threads + 1)
        pool = [threading.Thread(target=work, args=(i, start)) for i in range(threads)]
        for t in pool:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        return SEQUENCES * x.shape[1] / (time.perf_counter() - t0)
    return one_round


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg, _ = preset("cllm-4.5m")
    model = GPT(cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (SEQUENCES, cfg.block_size)).astype(np.int32)
    y = rng.integers(0, cfg.vocab_size, (SEQUENCES, cfg.block_size)).astype(np.int32)
    cases = {"2 threads x 32-sequence calls": (2, 32), "2 threads x one-sequence calls": (2, 1),
             "64 threads x one sequence": (64, 1)}
    with threadpool_limits(1):
        runners = {name: runner(model, *shape, x, y) for name, shape in cases.items()}
        for run in runners.values():           # compile, first touch of every buffer
            run()
        rates = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                rates[name].append(run())
    base = statistics.median(rates[next(iter(rates))])
    print(f"cllm-4.5m, {SEQUENCES} x {cfg.block_size} tokens, forward + backward, medians of {args.rounds} rounds")
    for name, r in rates.items():
        print(f"{name:32s} {statistics.median(r):7.0f} tokens/s  {statistics.median(r) / base:5.2f}x")


if __name__ == "__main__":
    main()
