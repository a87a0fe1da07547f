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
workers), best of 3, through the BLAS our kernels call (kernels/blas.py) and through MKL's
cblas_sgemm where MKL is installed; the faster of the two: the FMA units' throughput in practice. ceiling tokens/s = rate / operations per token: no implementation of this model in
float32 beats it on this machine. PyTorch fp32 eager and ours are measured as in the sweep
(sweep.py's children, alternated, medians). "max ratio" = ceiling / PyTorch: where it is below
1.5, the target cannot be met in float32 at that row, by any implementation.
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
from crystalline.model.kernels import mkl_bf16  # noqa: E402
from crystalline.model.kernels.blas import N_, PROVIDER, ROW_MAJOR, gemm  # noqa: E402
from sweep import ROWS, run_child  # noqa: E402

VOCAB = 256
SIZE = 2048


def step_flops(C, L, NH, T, B, V=VOCAB):
    """Floating-point operations of the matrix products of one training step (forward and
    backward) of B sequences of T tokens."""
    linear = B * T * (L * 2 * 12 * C * C + 2 * C * V)
    attention = B * L * NH * 2 * 2 * (C // NH) * (T * (T + 1) // 2)
    return 3 * linear + 3.5 * attention


def openblas_product(a, b, c):
    gemm(N_, N_, SIZE, SIZE, SIZE, 1.0, a, 0, SIZE, b, 0, SIZE, 0.0, c, 0, SIZE)


def mkl_product():
    """c = a @ b through MKL's cblas_sgemm (ctypes releases the GIL), or None without MKL."""
    if mkl_bf16.PATH is None:
        return None
    sgemm = ctypes.CDLL(mkl_bf16.PATH).cblas_sgemm
    sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                           ctypes.c_void_p, ctypes.c_int]

    def product(a, b, c):
        sgemm(ROW_MAJOR, N_, N_, SIZE, SIZE, SIZE, 1.0, a.ctypes.data, SIZE, b.ctypes.data, SIZE,
              0.0, c.ctypes.data, SIZE)
    return product


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
    providers = {PROVIDER: openblas_product}
    if mkl_product() is not None:
        providers[f"MKL's cblas_sgemm ({mkl_bf16.PATH})"] = mkl_product()
    rates = {}
    with threadpool_limits(1):
        for name, product in providers.items():
            rates[name] = gemm_rate(product)
            print(f"float32 GEMM, 2 threads at once, {name}: {rates[name]:.0f} GFLOP/s in all")
    rate = max(rates.values())
    print(f"{'C, L, NH (hs), T, B':26s} {'GFLOP/step':>10s} {'ceiling':>9s} {'ours':>7s} "
          f"{'(of ceiling)':>12s} {'PyTorch':>8s} {'ours/PyTorch':>12s} {'max ratio':>9s}")
    for row in (int(r) for r in args.rows.split(",")):
        C, L, NH, T, B = ROWS[row]
        flops = step_flops(C, L, NH, T, B)
        ceiling = B * T * rate * 1e9 / flops
        got = {"ours": [], "fp32": []}
        for _ in range(args.repeats):
            for runner in got:
                result = run_child(runner, row, args.steps)
                if result:
                    got[runner].append(result[0])
        ours, torch_ = (statistics.median(got[r]) if got[r] else float("nan") for r in got)
        print(f"{f'{C}, {L}, {NH} ({C // NH}), {T}, {B}':26s} {flops / 1e9:10.1f} "
              f"{ceiling:9.0f} {ours:7.0f} {ours / ceiling:11.0%} {torch_:8.0f} "
              f"{ours / torch_:11.2f}x {ceiling / torch_:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
