"""Time and GFLOP/s of every kernel, forward and backward, at cllm-4.5m shapes (B=16, T=128, C=256,
L=6, NH=8, V=256), one BLAS thread, CPU time of the calling thread (so other users' load on a
shared machine does not count), with each kernel's share of one training step (per-layer
kernels counted L times). Compile time is measured apart (first calls on tiny shapes).

    timeout 120 python benchmarks/kernels.py [--repeat 5]
"""

import argparse
import pathlib
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

t0 = time.perf_counter()
from crystalline.model.kernels.adamw import adamw_step, adamw_step_is_finite  # noqa: E402
from crystalline.model.kernels import blas  # noqa: E402
from crystalline.model.kernels.attention import (attention_backward, attention_forward,  # noqa: E402
                                                 scratch_floats)
from crystalline.model.kernels.clip import grad_norm, scale_  # noqa: E402
from crystalline.model.kernels.crossentropy import crossentropy_backward, crossentropy_forward  # noqa: E402
from crystalline.model.kernels.encoder import encoder_backward, encoder_forward  # noqa: E402
from crystalline.model.kernels.gelu import gelu_backward, gelu_forward  # noqa: E402
from crystalline.model.kernels.layernorm import layernorm_backward, layernorm_forward  # noqa: E402
from crystalline.model.kernels.matmul import matmul_backward, matmul_forward  # noqa: E402
from crystalline.model.kernels.residual import residual_forward  # noqa: E402

IMPORT_S = time.perf_counter() - t0


def cases(B, T, C, L, NH, V, P):
    r = np.random.default_rng(0)
    f = lambda *s: (r.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    N = B * T
    idx = r.integers(0, V, (B, T)).astype(np.int32)
    x, x2, x3, w, b, mean, rstd = f(N, C), f(N, C), f(N, C), f(C), f(C), f(N), f(N)
    qkv, lse, atty = f(N, 3 * C), np.zeros((B, NH, T), np.float32), f(N, C)
    scratch = f(scratch_floats(T, C // NH))
    attention_forward(atty, lse, qkv, B, T, C, NH, scratch)
    h4, h4b, h4c, probs, tg = f(N * 4 * C), f(N * 4 * C), f(N * 4 * C), f(N, V), idx.reshape(-1)
    p, g, m, v, mask = f(P), f(P), f(P), np.abs(f(P)), np.ones(P, np.float32)
    mm = lambda OC, IC: (f(N, OC), f(N, IC), f(OC, IC), f(OC))  # noqa: E731
    q1, q2, q3, q4, lm = mm(3 * C, C), mm(C, C), mm(4 * C, C), mm(C, 4 * C), mm(V, C)
    # backward outputs apart from the inputs (aliasing them let values grow without bound)
    g1, g2, g3, g4, glm = (tuple(a.copy() for a in q) for q in (q1, q2, q3, q4, lm))
    nb = np.zeros(0, np.float32)
    hs = C // NH
    att_fl = 2 * B * NH * T * T * hs * 2
    # (name, per step count, flops, forward call, backward call)
    return [
        ("encoder", 1, N * C, lambda: encoder_forward(x, idx, f(V, C), f(T, C), B, T, C),
         lambda: encoder_backward(f(V, C), f(T, C), x, idx, B, T, C)),
        ("layernorm", 2 * L + 1, 8 * N * C, lambda: layernorm_forward(x2, mean, rstd, x, w, b, N, C),
         lambda: layernorm_backward(x3, f(C), f(C), x2, x, w, mean, rstd, N, C)),
        ("matmul qkv", L, 2 * N * C * 3 * C, lambda: matmul_forward(q1[0], q1[1], q1[2], q1[3], N, C, 3 * C),
         lambda: matmul_backward(g1[1], g1[2], g1[3], q1[0], q1[1], q1[2], N, C, 3 * C)),
        ("attention", L, att_fl, lambda: attention_forward(atty, lse, qkv, B, T, C, NH, scratch),
         lambda: attention_backward(g1[0], x, qkv, atty, lse, B, T, C, NH, True, scratch)),
        ("matmul attproj", L, 2 * N * C * C, lambda: matmul_forward(q2[0], q2[1], q2[2], q2[3], N, C, C),
         lambda: matmul_backward(g2[1], g2[2], g2[3], q2[0], q2[1], q2[2], N, C, C)),
        ("residual", 2 * L, N * C, lambda: residual_forward(x3.reshape(-1), x.reshape(-1), x2.reshape(-1), N * C),
         None),
        ("matmul fc", L, 2 * N * C * 4 * C, lambda: matmul_forward(q3[0], q3[1], q3[2], q3[3], N, C, 4 * C),
         lambda: matmul_backward(g3[1], g3[2], g3[3], q3[0], q3[1], q3[2], N, C, 4 * C)),
        ("gelu", L, 10 * N * 4 * C, lambda: gelu_forward(h4b, h4, N * 4 * C),
         lambda: gelu_backward(h4c, h4, h4b, N * 4 * C)),
        ("matmul fcproj", L, 2 * N * 4 * C * C, lambda: matmul_forward(q4[0], q4[1], q4[2], q4[3], N, 4 * C, C),
         lambda: matmul_backward(g4[1], g4[2], g4[3], q4[0], q4[1], q4[2], N, 4 * C, C)),
        ("lm head", 1, 2 * N * C * V, lambda: matmul_forward(lm[0], lm[1], lm[2], nb, N, C, V),
         lambda: matmul_backward(glm[1], glm[2], nb, lm[0], lm[1], lm[2], N, C, V)),
        ("softmax+xent", 1, 4 * N * V, lambda: crossentropy_forward(lm[0], mean, probs, tg, N, V),
         lambda: crossentropy_backward(lm[0], probs, tg, 1e-4, N, V)),
        ("adamw", 1, 12 * P, lambda: adamw_step(p, g, m, v, mask, 1e-9, 0.9, 0.95, 1e-8, 0.1, 3), None),
        ("adamw check", 1, 12 * P,
         lambda: adamw_step_is_finite(p, g, m, v, mask, 1e-9, 0.9, 0.95, 1e-8, 0.1, 3), None),
        ("grad norm+scale", 1, 3 * P, lambda: (grad_norm(g), scale_(g, 1.0)), None),
    ]


def best(fn, repeat):
    """Fastest of `repeat` calls in CPU seconds of this thread (robust on a shared machine)."""
    ts = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        ts.append(time.thread_time() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with threadpool_limits(1):
        t = time.perf_counter()
        for _, _, _, fwd, bwd in cases(2, 8, 16, 1, 2, 16, 1000):      # compile / load cache
            fwd()
            if bwd:
                bwd()
        print(f"import {IMPORT_S:.2f} s, first calls (compile or cache load) {time.perf_counter() - t:.2f} s")
        print(f"sgemm: {blas.PROVIDER}")
        B, T, C, L, NH, V = 16, 128, 256, 6, 8, 256
        P = V * C + T * C + L * 12 * C * C + L * 13 * C + 2 * C
        rows = []
        for name, count, flops, fwd, bwd in cases(B, T, C, L, NH, V, P):
            tf = best(fwd, args.repeat)
            tb = best(bwd, args.repeat) if bwd else 0.0
            rows.append((name, count, flops, tf, tb))
    total = sum(c * (tf + tb) for _, c, _, tf, tb in rows)
    print(f"{'kernel':16s} {'x/step':>6s} {'fwd ms':>8s} {'GF/s':>6s} {'bwd ms':>8s} {'GF/s':>6s} {'share':>6s}")
    for name, c, fl, tf, tb in rows:
        bgf = f"{2 * fl / tb / 1e9:6.1f}" if tb else "     -"
        print(f"{name:16s} {c:6d} {tf * 1e3:8.2f} {fl / tf / 1e9:6.1f} {tb * 1e3:8.2f} {bgf} "
              f"{100 * c * (tf + tb) / total:5.1f}%")
    print(f"sum of kernels per step: {total * 1e3:.0f} ms -> {B * T / total:.0f} tokens/s upper bound "
          "(no Python dispatch, no buffer zeroing)")


if __name__ == "__main__":
    main()
