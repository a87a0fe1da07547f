"""What an operand 16 bytes off a cache line costs MKL's products (why layout.zeros aligns every
buffer the products touch): the bf16 GEMM (kernels/mkl_bf16.py) and the float32 one
(kernels/blas.py) at cllm-4.5m's MLP shapes, each operand in turn moved off a 64-byte line.

    timeout 600 python benchmarks/gemm_alignment.py [--repeat 20]

numpy promises 16-byte alignment; large arrays come from malloc's mmap, 16 bytes past a page, so
np.zeros buffers start 16, 32 or 48 bytes off a line. Prints the median microseconds of each
product with every operand aligned, then with one (or all) 16 bytes off.
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crystalline.model.kernels import blas, mkl_bf16  # noqa: E402
from crystalline.model.kernels.blas import N_, T_  # noqa: E402
from crystalline.model.layout import zeros  # noqa: E402

N, C = 1024, 256
# (transa, transb, M, N, K, lda, ldb, beta): the fc layer's forward, input and weight gradients
SHAPES = {"forward": (N_, T_, N, 4 * C, C, C, C, 1.0),
          "dinp": (N_, N_, N, C, 4 * C, 4 * C, C, 0.0),
          "dweight": (T_, N_, 4 * C, C, N, 4 * C, C, 0.0)}
# element offsets of (A, B, C) from a page boundary: 16 bytes is 8 bf16 or 4 float32 values
SHIFTS = {"aligned": (0, 0, 0), "A off": (1, 0, 0), "B off": (0, 1, 0), "C off": (0, 0, 1),
          "all off": (1, 1, 1)}


def bf16_product(ta, tb, M, Nn, K, a, ao, lda, b, bo, ldb, c, co, beta):
    mkl_bf16.gemm16(ta, tb, M, Nn, K, a, ao, lda, b, bo, ldb, beta, c, co, Nn)


def fp32_product(ta, tb, M, Nn, K, a, ao, lda, b, bo, ldb, c, co, beta):
    blas.gemm(ta, tb, M, Nn, K, 1.0, a, ao, lda, b, bo, ldb, beta, c, co, Nn)


def median_us(product, operands, shape, shift, repeat):
    ta, tb, M, Nn, K, lda, ldb, beta = shape
    a, b, c = operands
    step = 16 // a.itemsize, 16 // b.itemsize, 16 // c.itemsize
    ao, bo, co = (s * e for s, e in zip(shift, step))
    args = (ta, tb, M, Nn, K, a, ao, lda, b, bo, ldb, c, co, beta)
    product(*args)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        product(*args)
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    size = 4 * C * N + 64
    kinds = {"fp32 (" + blas.PROVIDER.split(" (")[0] + ")": (fp32_product, np.float32)}
    if mkl_bf16.PATH is not None:
        kinds["bf16 (MKL)"] = (bf16_product, np.uint16)
    with threadpool_limits(1):
        for kind, (product, dtype) in kinds.items():
            a, b = zeros(size, dtype), zeros(size, dtype)
            if dtype == np.uint16:              # bf16 bits of values in [-2, 2]
                a[:], b[:] = (rng.integers(0x3F00, 0x4000, size) | (rng.integers(0, 2, size) << 15)
                              for _ in range(2))
            else:
                a[:], b[:] = (rng.standard_normal(size).astype(np.float32) for _ in range(2))
            c = zeros(size, np.float32)
            print(f"{kind}: median microseconds, {args.repeat} calls each")
            print(f"  {'product':10s}" + "".join(f"{name:>10s}" for name in SHIFTS))
            for name, shape in SHAPES.items():
                cells = [median_us(product, (a, b, c), shape, shift, args.repeat)
                         for shift in SHIFTS.values()]
                print(f"  {name:10s}" + "".join(f"{x:10.0f}" for x in cells))


if __name__ == "__main__":
    main()
