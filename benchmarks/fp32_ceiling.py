"""How fast float32 training can possibly be on this machine, against PyTorch fp32 eager: the
ceiling that issue #17's target (>= 1.5x PyTorch fp32 at every sweep row) has to fit under.

    timeout 1800 python benchmarks/fp32_ceiling.py [--rows 0,1,2,3,4,5] [--repeats 3]

A training step of the sweep's model (benchmarks/sweep.py) must at least do its matrix products:
per token and layer 2 * 12 C^2 floating-point operations forward (qkv, projection, the MLP's
two), 2 C V for the LM head, and causal attention's 2 * 2 * hs * (t + 1) at position t per head
(scores and the weighted sum, only keys up to t); the backward does twice the linear layers'
(the input and the weight gradients) and 5/2 times attention's (FlashAttention-2: scores again,
dP, dQ, dK, dV). Nothing else counts: LayerNorm, softmax, GELU, the optimizer are free here.

The rate: float32 GEMM, 2048^3 products on both cores at once (two threads, as two sphere
workers), best of 3, through every sgemm kernels/blas.py can bind (MKL's where installed,
numpy's OpenBLAS); the fastest: the FMA units' throughput in practice. "ceiling" tokens/s =
rate / operations per token: no implementation of this model in float32 beats it here.
"+ Node Zero" adds the serial part of our design's step, measured: Node Zero's reduction and
AdamW (medians of TrainStep.timings of a 2-worker fp32 step), during which no product runs.
PyTorch fp32 eager and ours are measured as in the sweep (sweep.py's children, alternated,
medians). "max ratio" = ceiling / PyTorch: below 1.5, the target cannot be met in float32 at
that row by any implementation; "with Node Zero", by none that keeps AdamW on Node Zero.
"""

import argparse
import ctypes
import pathlib
import statistics
import sys
import threading
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from crystalline.errors import ConfigError  # noqa: E402
from crystalline.model.kernels import blas  # noqa: E402
from step_profile import phases  # noqa: E402
from sweep import ROWS, model_config, run_child  # noqa: E402

VOCAB = 256
SIZE = 2048


def step_flops(C, L, NH, T, B, V=VOCAB):
    """Floating-point operations of the matrix products of one training step (forward and
    backward) of B sequences of T tokens."""
    linear = B * T * (L * 2 * 12 * C * C + 2 * C * V)
    attention = B * L * NH * 2 * 2 * (C // NH) * (T * (T + 1) // 2)
    return 3 * linear + 3.5 * attention


def sgemms():
    """{description: product(a, b, c) computing c = a @ b} for each ILP64 sgemm blas.py can bind
    (ctypes calls release the GIL, so threads run them at once)."""
    found = {}
    for binder in (blas._mkl_sgemm, blas._ilp64_openblas_sgemm):
        try:
            bound = binder()
        except ConfigError:                      # CRYSTALLINE_SGEMM=mkl without MKL
            bound = None
        if bound is None:
            continue
        i64, fp = ctypes.c_int64, ctypes.c_void_p
        sgemm = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64,
                                 ctypes.c_float, fp, i64, fp, i64, ctypes.c_float, fp, i64)(bound[0])

        def product(a, b, c, sgemm=sgemm):
            sgemm(blas.ROW_MAJOR, blas.N_, blas.N_, SIZE, SIZE, SIZE, 1.0, a.ctypes.data, SIZE,
                  b.ctypes.data, SIZE, 0.0, c.ctypes.data, SIZE)
        found[bound[1]] = product
    return found


def gemm_rate(product, threads=2, repeats=3):
    """GFLOP/s of `threads` concurrent SIZE^3 float32 products (one BLAS thread each), best of
    `repeats`."""
    rng = np.random.default_rng(0)
    operands = [(rng.standard_normal((SIZE, SIZE)).astype(np.float32),
                 rng.standard_normal((SIZE, SIZE)).astype(np.float32),
                 np.zeros((SIZE, SIZE), np.float32)) for _ in range(threads)]
    product(*operands[0])                                    # compile, warm
    best = 0.0
    for _ in range(repeats):
        pool = [threading.Thread(target=product, args=ops) for ops in operands]
        t = time.perf_counter()
        for p in pool:
            p.start()
        for p in pool:
            p.join()
        best = max(best, threads * 2 * SIZE**3 / (time.perf_counter() - t) / 1e9)
    return best


def main():
    from threadpoolctl import threadpool_limits
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(str(r) for r in range(len(ROWS))))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    rates = {}
    with threadpool_limits(1):
        for name, product in sgemms().items():
            rates[name] = gemm_rate(product)
            print(f"float32 GEMM, 2 threads at once, {name}: {rates[name]:.0f} GFLOP/s in all")
    rate = max(rates.values())
    print(f"{'C, L, NH (hs), T, B':26s} {'GFLOP/step':>10s} {'ceiling':>8s} {'ours':>6s} "
          f"{'of ceiling':>10s} {'PyTorch':>8s} {'ours/PyTorch':>12s} {'max ratio':>9s} "
          f"{'Node Zero ms':>12s} {'max ratio with it':>17s}")
    for row in (int(r) for r in args.rows.split(",")):
        C, L, NH, T, B = ROWS[row]
        flops = step_flops(C, L, NH, T, B)
        gemm_s = flops / (rate * 1e9)
        ph = phases(model_config(row), B, "fp32")
        serial_s = (ph["reduce"] + ph["update"]) / 1e3
        got = {"ours": [], "fp32": []}
        for _ in range(args.repeats):
            for runner in got:
                result = run_child(runner, row, args.steps)
                if result:
                    got[runner].append(result[0])
        ours, torch_ = (statistics.median(got[r]) if got[r] else float("nan") for r in got)
        ceiling, with_serial = B * T / gemm_s, B * T / (gemm_s + serial_s)
        print(f"{f'{C}, {L}, {NH} ({C // NH}), {T}, {B}':26s} {flops / 1e9:10.1f} "
              f"{ceiling:8.0f} {ours:6.0f} {ours / ceiling:10.0%} {torch_:8.0f} "
              f"{ours / torch_:11.2f}x {ceiling / torch_:8.2f}x {1e3 * serial_s:12.1f} "
              f"{with_serial / torch_:16.2f}x", flush=True)


if __name__ == "__main__":
    main()
