"""crystalline against PyTorch on cllm-4.5m, and both against this machine's GEMM rate.

    timeout 900 python benchmarks/vs_pytorch.py [--rounds 5] [--steps 2] [--skip compile,scale]
    timeout 1800 python benchmarks/vs_pytorch.py --precision bf16 --skip compile,scale
    timeout 5400 python benchmarks/vs_pytorch.py --sweep [--repeats 3] [--steps 2] [--rows 0,1] [--runners ours,ours-bf16,fp32]

Prints, all measured in this one run:
  * sgemm GFLOP/s at the model's shapes (every product of one layer's forward and backward plus
    the LM head, exact transposes, preallocated outputs), numpy's OpenBLAS: 1 thread; 2 threads
    as 2 Python threads each with single-threaded BLAS (how the spheres use it); and one call
    with OpenBLAS's own 2 threads. The larger 2-thread figure is the denominator.
  * training tokens/s, global batch 16 x 128, forward + backward + clip + AdamW:
    ours = Trainer(workers=1 | 2).step() (the real engine); pytorch = the same model
    (tests/test_torch_parity.torch_loss: F.linear, F.scaled_dot_product_attention, ...) with
    torch.optim.AdamW, torch.set_num_threads(1 | 2). The four runners alternate round by round
    (so load from other users hits all of them); medians of the rounds, the ratio of medians and
    the median of per-round ratios, and model FLOP/s over GEMM FLOP/s (31.1 MFLOP per token:
    6 x parameters in the matmuls + attention over the full block, forward + backward).
  * compile: a subprocess with an empty NUMBA_CACHE_DIR (a fresh install) and one with the
    cache just written (every later process): seconds to import, to build the trainer, of the
    first step, and of the second step (the step time, apart).
  * --precision bf16: the compare part in bf16 at 2 threads (--threads): ours (Trainer(precision="bf16"),
    MKL's or our vdpbf16ps GEMM as precision.gemm_provider() picks) against PyTorch's bf16
    autocast and torch.compile + bf16 autocast (the same step under torch.autocast("cpu",
    torch.bfloat16)), with ours and PyTorch's fp32 beside them; alternated, medians. Target:
    ours bf16 >= 1.5x PyTorch's fastest mode.
  * scale: Trainer(workers=63) against Trainer(workers=2), alternated, at global batch 64 (one
    sequence per worker) and 252 (four); the top-level groups' tokens/s
    (stats.group_tokens_per_s) slowest / fastest.
  * --sweep (instead of all the above): the six shapes of issue #17, ours (2 workers) in fp32
    and bf16 against PyTorch fp32 eager, bf16 autocast and torch.compile in fp32 and under bf16
    autocast (2 threads), tokens/s and peak RSS, each configuration in its own process
    (benchmarks/sweep.py).
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from crystalline.config import TrainConfig, preset  # noqa: E402
# Load the kernels' BLAS before any threadpool_limits (threadpoolctl limits only loaded libraries).
from crystalline.model.gpt import GPT  # noqa: E402
from crystalline.model.kernels import blas  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

CORPUS = ROOT / "data" / "tinyshakespeare.txt"


def model_flops_per_token(cfg) -> float:
    """Forward + backward (3x forward) FLOPs per token: matmuls and attention over the full block."""
    C, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    forward = 2 * 12 * C * C * L + 2 * C * V + 2 * 2 * T * C * L
    return 3.0 * forward


# ---------------------------------------------------------------- GEMM rate
def gemm_suite(cfg, N):
    """Every product of one layer forward + backward and the LM head at the model's shapes, as
    (a, b, out) with out = a @ b (views with the transposes the model uses)."""
    r = np.random.default_rng(0)
    C, V = cfg.n_embd, cfg.vocab_size
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    ops = []
    for IC, OC in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C), (C, V)):
        x, w, dy = f(N, IC), f(OC, IC), f(N, OC)
        ops.append((x, w.T, np.empty((N, OC), np.float32)))          # forward  x @ w.T
        ops.append((dy, w, np.empty((N, IC), np.float32)))           # dinp     dy @ w
        ops.append((dy.T, x, np.empty((OC, IC), np.float32)))        # dweight  dy.T @ x
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in ops)
    return ops, flops


def run_suite(ops, repeat):
    for _ in range(repeat):
        for a, b, out in ops:
            np.matmul(a, b, out=out)


def gemm_rates(cfg, N, rounds=5, repeat=3):
    """(1 thread, 2 Python threads x 1-thread BLAS, OpenBLAS 2 threads) GFLOP/s, medians."""
    suites = [gemm_suite(cfg, N) for _ in range(2)]
    flops = suites[0][1]
    one, two, blas2 = [], [], []
    for _ in range(rounds):
        with threadpool_limits(1):
            run_suite(suites[0][0], 1)
            t = time.perf_counter()
            run_suite(suites[0][0], repeat)
            one.append(repeat * flops / (time.perf_counter() - t) / 1e9)
            threads = [threading.Thread(target=run_suite, args=(s[0], repeat)) for s in suites]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            two.append(2 * repeat * flops / (time.perf_counter() - t) / 1e9)
        with threadpool_limits(2):
            t = time.perf_counter()
            run_suite(suites[0][0], repeat)
            blas2.append(repeat * flops / (time.perf_counter() - t) / 1e9)
    return statistics.median(one), statistics.median(two), statistics.median(blas2)


# ---------------------------------------------------------------- runners
def torch_runner(cfg, threads, mode="fp32"):
    """PyTorch's training step of the same model (step(B) -> loss): loss, backward, clipping at
    1.0, AdamW; mode fp32 (eager), bf16 (under bf16 autocast), compile or compile-bf16 (the
    loss through torch.compile, in fp32 or under bf16 autocast)."""
    import torch
    from test_torch_parity import torch_adamw, torch_loss
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in GPT(cfg, seed=0).param_views().items()}
    opt = torch_adamw(tp)
    loss_fn = torch.compile(torch_loss) if mode.startswith("compile") else torch_loss
    rng = np.random.default_rng(0)

    def step(B):
        torch.set_num_threads(threads)       # every call: threadpoolctl limits OpenMP too
        data = torch.from_numpy(rng.integers(0, cfg.vocab_size, (B, cfg.block_size + 1)))
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.endswith("bf16")):
            loss, _ = loss_fn(tp, cfg, x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        opt.step()
        return loss.item()
    return step


def our_trainer(cfg, workers, batch, precision="fp32"):
    from crystalline.engine.trainer import Trainer
    tcfg = TrainConfig(batch_size=batch, eval_interval=0, warmup_steps=10, precision=precision)
    return Trainer(cfg, tcfg, str(CORPUS), workers=workers)


def timed(step, batch, steps):
    """(wall seconds per step, process CPU seconds per step)."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(batch)
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def compare(cfg, args):
    B, T = 16, cfg.block_size
    tokens = B * T
    trainers = {n: our_trainer(cfg, n, B) for n in (1, 2)}
    runners = {}
    for n in (1, 2):
        runners[f"crystalline {n}w"] = lambda b, tr=trainers[n]: tr.step()
        runners[f"pytorch {n}t"] = torch_runner(cfg, n)
    for step in runners.values():          # warm: compile / first allocation
        step(B)
    info = [i for i in threadpool_info() if i["user_api"] == "blas"]
    print("BLAS while training:", [(i["prefix"], i.get("architecture"), i["num_threads"]) for i in info])
    print("kernels' sgemm:", blas.PROVIDER)
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, step in runners.items():
            w, c = timed(step, B, args.steps)
            wall[name].append(w)
            cpu[name].append(c)
    for tr in trainers.values():
        tr.close()
    g1, g2_threads, g2_blas = gemm_rates(cfg, B * T)
    g2 = max(g2_threads, g2_blas)
    fpt = model_flops_per_token(cfg)
    print(f"\nsgemm at the model's shapes (numpy OpenBLAS, {info[0].get('architecture')} kernels): "
          f"1 thread {g1:.1f} GFLOP/s; 2 threads: {g2_threads:.1f} as 2 Python threads x 1-thread "
          f"BLAS, {g2_blas:.1f} as OpenBLAS 2 threads -> denominator {g2:.1f}")
    print(f"model: {fpt / 1e6:.1f} MFLOP per token (forward + backward, attention over the full block)")
    print(f"\n{'runner':16s} {'tokens/s':>9s} {'cpu s/step':>10s} {'GFLOP/s':>8s} {'of GEMM':>8s}  rounds (tokens/s)")
    for name in runners:
        med = statistics.median(wall[name])
        gemm = g1 if name.endswith("1w") or name.endswith("1t") else g2
        print(f"{name:16s} {tokens / med:9.0f} {statistics.median(cpu[name]):10.3f} "
              f"{fpt * tokens / med / 1e9:8.1f} {100 * fpt * tokens / med / 1e9 / gemm:7.0f}%  "
              f"{', '.join(f'{tokens / w:.0f}' for w in wall[name])}")
    for n in (1, 2):
        ours, theirs = wall[f"crystalline {n}w"], wall[f"pytorch {n}t"]
        paired = statistics.median(t / o for o, t in zip(ours, theirs))
        print(f"crystalline / pytorch, {n} thread{'s' if n > 1 else ''}: "
              f"{statistics.median(theirs) / statistics.median(ours):.2f}x of medians, "
              f"{paired:.2f}x median of per-round ratios")


# ---------------------------------------------------------------- bf16
def compare_bf16(cfg, args):
    from crystalline.model.precision import gemm_provider
    B, tokens, n = 16, 16 * cfg.block_size, args.threads
    trainers = {p: our_trainer(cfg, n, B, p) for p in ("bf16", "fp32")}
    runners = {
        "crystalline bf16": lambda b: trainers["bf16"].step(),
        "pytorch bf16": torch_runner(cfg, n, "bf16"),
        "pytorch compile+bf16": torch_runner(cfg, n, "compile-bf16"),
        "crystalline fp32": lambda b: trainers["fp32"].step(),
        "pytorch fp32": torch_runner(cfg, n),
    }
    t = time.perf_counter()
    for step in runners.values():          # warm: compile / first allocation
        step(B)
        step(B)
    print(f"\nbf16, {n} thread(s), batch {B} x {cfg.block_size}; our bf16 GEMM: {gemm_provider()}; warm-up "
          f"(compiles) {time.perf_counter() - t:.0f} s")
    wall = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, step in runners.items():
            wall[name].append(timed(step, B, args.steps)[0])
    for tr in trainers.values():
        tr.close()
    print(f"{'runner':22s} {'tokens/s':>9s}  rounds (tokens/s)")
    for name in runners:
        print(f"{name:22s} {tokens / statistics.median(wall[name]):9.0f}  "
              f"{', '.join(f'{tokens / w:.0f}' for w in wall[name])}")
    ours = wall["crystalline bf16"]
    fastest = min(("pytorch bf16", "pytorch compile+bf16", "pytorch fp32"),
                  key=lambda n: statistics.median(wall[n]))
    paired = statistics.median(t / o for o, t in zip(ours, wall[fastest]))
    ratio = statistics.median(wall[fastest]) / statistics.median(ours)
    print(f"crystalline bf16 / PyTorch's fastest mode ({fastest}): {ratio:.2f}x of medians, {paired:.2f}x "
          f"median of per-round ratios (target 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})")
    print(f"crystalline bf16 / crystalline fp32: "
          f"{statistics.median(wall['crystalline fp32']) / statistics.median(ours):.2f}x of medians")


# ---------------------------------------------------------------- compile
COMPILE_PROBE = """
import time; t0 = time.perf_counter()
from crystalline.config import TrainConfig, preset
from crystalline.engine.trainer import Trainer
t1 = time.perf_counter()
cfg, _ = preset("cllm-4.5m")
tr = Trainer(cfg, TrainConfig(batch_size=16, eval_interval=0), {corpus!r}, workers=1)
t2 = time.perf_counter(); tr.step(); t3 = time.perf_counter(); tr.step(); t4 = time.perf_counter()
tr.close()
print(f"{{t1 - t0:.2f}} {{t2 - t1:.2f}} {{t3 - t2:.2f}} {{t4 - t3:.2f}} {{t3 - t0:.2f}}")
"""


def compile_times():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = COMPILE_PROBE.format(corpus=str(CORPUS))
        for label in ("fresh cache", "cache hit"):
            c = time.time()
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.split()
            imp, build, first, second, to_first = map(float, out[-5:])
            print(f"{label:11s}: process start to end of first step {to_first:6.2f} s (import {imp:.2f}, "
                  f"build {build:.2f}, first step {first:.2f}); step time {second:.2f} s")


# ---------------------------------------------------------------- scale
def scale(cfg, args, B):
    from crystalline.engine.stats import group_tokens_per_s
    trainers = {n: our_trainer(cfg, n, B) for n in (2, 63)}
    for tr in trainers.values():
        tr.step()
    times = {n: [] for n in trainers}
    groups = []
    for _ in range(args.scale_rounds):
        for n, tr in trainers.items():
            t = time.perf_counter()
            tr.step()
            times[n].append(time.perf_counter() - t)
            if n == 63:
                groups.append(group_tokens_per_s(tr.stats.snapshot()))
    snap = trainers[63].stats.snapshot()
    w = snap["role"] == "worker"
    sequences = np.bincount(snap["group"][w], weights=snap["last_tokens"][w], minlength=12)[:12]
    for tr in trainers.values():
        tr.close()
    tokens = B * cfg.block_size
    t2, t63 = statistics.median(times[2]), statistics.median(times[63])
    paired = statistics.median(a / b for a, b in zip(times[2], times[63]))
    per_group = np.median(groups, axis=0)
    print(f"\nbatch {B} ({B / 63:.1f} sequences per worker at 63 workers)")
    print(f"workers=2 : {tokens / t2:7.0f} tokens/s   workers=63: {tokens / t63:7.0f} tokens/s  "
          f"(rounds 63w: {', '.join(f'{tokens / t:.0f}' for t in times[63])})")
    print(f"63 / 2 workers: {t2 / t63:.2f}x of medians, {paired:.2f}x median of per-round ratios")
    print(f"63 workers, group tokens/s (stats.group_tokens_per_s): slowest / fastest = "
          f"{per_group.min() / per_group.max():.2f}  [{', '.join(f'{x:.0f}' for x in per_group)}]")
    print(f"  sequences per group: {', '.join(str(int(x / cfg.block_size)) for x in sequences)} "
          "(split_by_group deals the batch over the 12 groups first)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps timed per runner per round")
    ap.add_argument("--scale-rounds", type=int, default=3)
    ap.add_argument("--scale-batches", default="64,252",
                    help="global batches of the 63- against 2-worker comparison")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the compare part against PyTorch's bf16 modes instead")
    ap.add_argument("--threads", type=int, default=2, help="workers / torch threads of --precision bf16")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: compare,compile,scale")
    ap.add_argument("--sweep", action="store_true", help="the shape sweep of issue #17 instead")
    ap.add_argument("--repeats", type=int, default=3, help="--sweep: rounds over the runners")
    ap.add_argument("--rows", default="0,1,2,3,4,5", help="--sweep: which shapes (0-5)")
    ap.add_argument("--runners", default="ours,ours-bf16,fp32,bf16,compile,compile-bf16",
                    help="--sweep: which runners")
    args = ap.parse_args()
    if args.sweep:
        from sweep import RUNNERS, sweep
        runners = tuple(args.runners.split(","))
        if not set(runners) <= set(RUNNERS):
            ap.error(f"--runners: unknown {sorted(set(runners) - set(RUNNERS))}; choose from "
                     f"{','.join(RUNNERS)}")
        return sweep([int(r) for r in args.rows.split(",")], args.repeats, max(args.steps, 1),
                     runners)
    skip = set(filter(None, args.skip.split(",")))
    import torch  # noqa: F401  (load its libraries before threadpoolctl looks)
    cfg, _ = preset("cllm-4.5m")
    print(f"cllm-4.5m: {GPT(cfg).num_parameters:,} parameters; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    if "compile" not in skip:
        compile_times()
    if "compare" not in skip:
        (compare_bf16 if args.precision == "bf16" else compare)(cfg, args)
    if "scale" not in skip:
        for batch in map(int, args.scale_batches.split(",")):
            scale(cfg, args, batch)


if __name__ == "__main__":
    main()
