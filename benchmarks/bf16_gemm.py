"""The bf16 GEMM rate against the fp32 one at cllm-4.5m's shapes, as the model calls them.

    timeout 600 python benchmarks/bf16_gemm.py [--rounds 7] [--tokens 1024]

Per worker at batch 16 over 2 workers (N = 1024 tokens), every product of a training step: for
each linear layer (qkv, attproj, fc, fcproj: x6 layers; the LM head x1) its forward
out = x @ W.T and its backward (dinp = dy @ W, dweight = dy.T @ x), through
  * fp32:  matmul_forward / matmul_backward (single-threaded OpenBLAS sgemm, what fp32 runs);
  * bf16:  matmul_forward_bf16 / matmul_backward_bf16 (our vdpbf16ps tiles; the activations are
           rounded and packed inside, the weights come packed as Node Zero leaves them);
  * mkl:   MKL's cblas_gemm_bf16bf16f32 (sequential), where libmkl_rt is found (pip install mkl,
           or CRYSTALLINE_MKL_RT=/path/libmkl_rt.so.2), with the activations' rounding counted.
Also the instruction's own peak: a loop of independent vdpbf16ps against one of FMAs (24
accumulators each, no memory), GFLOP/s. CPU time of the calling thread (other users' load on a
shared machine does not count), the runners alternated round by round, medians.
"""

import argparse
import ctypes
import os
import pathlib
import statistics
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crystalline.config import preset  # noqa: E402
from crystalline.model.kernels import bf16 as k16  # noqa: E402
from crystalline.model.kernels.matmul import matmul_backward, matmul_forward  # noqa: E402
from crystalline.model.kernels.matmul_bf16 import matmul_backward_bf16, matmul_forward_bf16  # noqa: E402
from crystalline.model.precision import Bf16Scratch, _packed_words  # noqa: E402


# ---------------------------------------------------------------- instruction peak
def _spin(kind):
    """A loop of 24 independent vdpbf16ps (kind "dp") or FMAs ("fma") on registers."""
    @intrinsic
    def spin(typingctx, n, x):
        def codegen(context, builder, sig, args):
            f32v, i32 = ir.VectorType(ir.FloatType(), 16), ir.IntType(32)
            if kind == "dp":
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                    f32v, [f32v, k16._BF16V, k16._BF16V]), k16.DPBF16PS)
            else:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                    f32v, [f32v] * 3), "llvm.fma.v16f32")
            xv = builder.insert_element(ir.Constant(f32v, ir.Undefined), args[1], ir.Constant(i32, 0))
            xv = builder.shuffle_vector(xv, xv, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            acc = [cgutils.alloca_once_value(builder, builder.fadd(xv, ir.Constant(f32v, [float(i)] * 16)))
                   for i in range(24)]
            y = builder.fmul(xv, xv)
            ops = (xv, y)
            if kind == "dp":
                ops = (builder.bitcast(xv, k16._BF16V), builder.bitcast(y, k16._BF16V))
            with cgutils.for_range(builder, args[0]):
                for a in acc:
                    builder.store(builder.call(fn, [builder.load(a), *ops]), a)
            s = builder.load(acc[0])
            for a in acc[1:]:
                s = builder.fadd(s, builder.load(a))
            return builder.extract_element(s, ir.Constant(i32, 0))
        return types.float32(n, x), codegen

    @njit(nogil=True)
    def run(n, x):
        return spin(n, x)
    return run


def peaks(rounds):
    out = {}
    for kind, flops in (("fma", 32), ("dp", 64)):
        run = _spin(kind)
        run(10, np.float32(1e-3))
        n, times = 2_000_000, []
        for _ in range(rounds):
            t = time.thread_time()
            run(n, np.float32(1e-3))
            times.append(time.thread_time() - t)
        out[kind] = 24 * n * flops / statistics.median(times) / 1e9
    return out


# ---------------------------------------------------------------- MKL
def load_mkl():
    """MKL's cblas_gemm_bf16bf16f32, sequential, or None where libmkl_rt is not found."""
    candidates = [os.environ.get("CRYSTALLINE_MKL_RT", ""), os.path.join(sys.prefix, "lib", "libmkl_rt.so.2")]
    for path in filter(os.path.exists, candidates):
        lib = ctypes.CDLL(path)
        lib.MKL_Set_Threading_Layer(1)                 # MKL_THREADING_SEQUENTIAL
        f = lib.cblas_gemm_bf16bf16f32
        p, i, x = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        f.argtypes = [i, i, i, i, i, i, x, p, i, p, i, x, p, i]
        return f, path
    return None, None


# ---------------------------------------------------------------- the products
def layers(cfg):
    """(name, IC, OC, count per step)."""
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    return [("qkv", C, 3 * C, L), ("attproj", C, C, L), ("fc", C, 4 * C, L), ("fcproj", 4 * C, C, L),
            ("lm head", C, V, 1)]


def runners(cfg, N, mkl):
    r = np.random.default_rng(0)
    scratch = Bf16Scratch(cfg, N // cfg.block_size, cfg.block_size, "vdpbf16ps")
    out = {}
    for name, IC, OC, count in layers(cfg):
        x, dy = r.standard_normal((N, IC)).astype(np.float32), r.standard_normal((N, OC)).astype(np.float32)
        w, bias = (r.standard_normal((OC, IC)) * 0.05).astype(np.float32), np.zeros(OC, np.float32)
        y, dx, dw, db = (np.zeros((N, OC), np.float32), np.zeros((N, IC), np.float32),
                         np.zeros((OC, IC), np.float32), np.zeros(OC, np.float32))
        wt_p, w_p = np.zeros(_packed_words(IC, OC), np.uint32), np.zeros(_packed_words(OC, IC), np.uint32)
        k16.pack_panels(wt_p, w, 0, IC, IC, OC, True)
        k16.pack_panels(w_p, w, 0, IC, OC, IC, False)
        fns = {
            "fp32": lambda x=x, w=w, y=y, dy=dy, dx=dx, dw=dw, db=db, bias=bias, IC=IC, OC=OC: (
                matmul_forward(y, x, w, bias, N, IC, OC),
                matmul_backward(dx, dw, db, dy, x, w, N, IC, OC, 0.0, 0.0)),
            "bf16": lambda x=x, y=y, dy=dy, dx=dx, dw=dw, db=db, bias=bias, IC=IC, OC=OC, a=wt_p, b=w_p: (
                matmul_forward_bf16(y, x, a, bias, N, IC, OC, scratch.a, scratch.tile),
                matmul_backward_bf16(dx, dw, db, dy, x, b, N, IC, OC, 0.0, 0.0, scratch.a, scratch.b,
                                     scratch.tile)),
        }
        if mkl is not None:
            w16 = np.zeros(OC * IC, np.uint16)
            k16.round_bf16(w16, w, w.size)
            x16, dy16 = np.zeros(N * IC, np.uint16), np.zeros(N * OC, np.uint16)

            def mkl_run(x=x, dy=dy, y=y, dx=dx, dw=dw, IC=IC, OC=OC, w16=w16, x16=x16, dy16=dy16):
                k16.round_bf16(x16, x, x.size)
                mkl(101, 111, 112, N, OC, IC, 1.0, x16.ctypes.data, IC, w16.ctypes.data, IC, 0.0,
                    y.ctypes.data, OC)                                          # y = x @ W.T
                k16.round_bf16(dy16, dy, dy.size)
                mkl(101, 111, 111, N, IC, OC, 1.0, dy16.ctypes.data, OC, w16.ctypes.data, IC, 0.0,
                    dx.ctypes.data, IC)                                         # dx = dy @ W
                mkl(101, 112, 111, OC, IC, N, 1.0, dy16.ctypes.data, OC, x16.ctypes.data, IC, 0.0,
                    dw.ctypes.data, IC)                                         # dW = dy.T @ x
            fns["mkl"] = mkl_run
        out[name] = (count, 3 * 2 * N * IC * OC, fns)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=1024, help="N = tokens per worker")
    args = ap.parse_args()
    cfg, _ = preset("cllm-4.5m")
    mkl, mkl_path = load_mkl()
    print(f"cllm-4.5m products at N = {args.tokens} tokens; load average {os.getloadavg()[0]:.1f} "
          f"(shared machine: thread CPU time, alternated rounds, medians); MKL: {mkl_path or 'not found'}")
    peak = peaks(args.rounds)
    print(f"instruction peak, one core: FMA {peak['fma']:.0f} GFLOP/s, vdpbf16ps {peak['dp']:.0f} GFLOP/s "
          f"({peak['dp'] / peak['fma']:.2f}x)")
    with threadpool_limits(1):
        ops = runners(cfg, args.tokens, mkl)
        kinds = list(next(iter(ops.values()))[2])
        times = {(name, k): [] for name in ops for k in kinds}
        for (count, flops, fns) in ops.values():
            for fn in fns.values():
                fn()                                         # compile / warm
        for _ in range(args.rounds):
            for name, (count, flops, fns) in ops.items():
                for k, fn in fns.items():
                    t = time.thread_time()
                    fn()
                    times[name, k].append(time.thread_time() - t)
    print(f"\n{'product':10s} " + " ".join(f"{k + ' GFLOP/s':>14s}" for k in kinds)
          + "".join(f"   {k + '/fp32':>8s}" for k in kinds if k != "fp32"))
    total = {k: 0.0 for k in kinds}
    step_flops = 0
    def row(label, flops, seconds):
        ratios = "".join(f"   {seconds['fp32'] / seconds[k]:8.2f}" for k in kinds if k != "fp32")
        print(f"{label:10s} " + " ".join(f"{flops / seconds[k] / 1e9:14.1f}" for k in kinds) + ratios)

    for name, (count, flops, fns) in ops.items():
        med = {k: statistics.median(times[name, k]) for k in kinds}
        for k in kinds:
            total[k] += count * med[k]
        step_flops += count * flops
        row(name, flops, med)
    row("one step", step_flops, total)
    print("target: bf16 GEMM >= 1.7x the fp32 rate")


if __name__ == "__main__":
    main()
