"""The shape sweep of `benchmarks/vs_pytorch.py --sweep`: crystalline against PyTorch on the six
shapes of issue #17, each (shape, runner) in its own process so that its peak RSS is its own.

    timeout 5400 python benchmarks/vs_pytorch.py --sweep [--repeats 3] [--steps 2] [--rows 0,5]
    python benchmarks/sweep.py RUNNER ROW STEPS      # one child: prints "tokens/s peak-RSS-MiB"

Runners, all training steps of the same model (nanoGPT's GPT, byte vocabulary 256) on random
tokens of global batch B x T: forward + backward + gradient clipping + AdamW.
  ours          Trainer(workers=2).step() (the real engine, 2 sphere workers), float32
  ours-bf16     the same with precision="bf16" (bf16 matrix products, fp32 master weights)
  fp32          PyTorch eager, float32, torch.set_num_threads(2) (tests' torch_loss: F.linear,
                F.scaled_dot_product_attention, ...; torch.optim.AdamW)
  bf16          the same under torch.autocast("cpu", torch.bfloat16)
  compile       the same loss through torch.compile (inductor), float32
  compile-bf16  torch.compile under bf16 autocast
Each child warms up with one step (compiles: numba cache, torch.compile) and times STEPS more
(median step). The parent runs the runners one after another and repeats the round, so load from
other users of the machine hits every runner alike. Per shape it prints each runner's median
tokens/s and peak RSS, and two ratios, each the median of per-round ratios: ours in float32
against PyTorch fp32 eager, and our fastest runner against PyTorch's fastest.
"""

import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (C, L, NH, T, B): the rows of issue #17's table
ROWS = [(256, 6, 8, 128, 16), (384, 6, 6, 256, 8), (768, 2, 12, 256, 4), (512, 4, 4, 128, 8),
        (256, 6, 8, 512, 8), (256, 6, 8, 1024, 8)]
RUNNERS = ("ours", "ours-bf16", "fp32", "bf16", "compile", "compile-bf16")
OURS = ("ours", "ours-bf16")


def model_config(row):
    from crystalline.config import ModelConfig
    C, L, NH, T, _ = ROWS[row]
    return ModelConfig(vocab_size=256, block_size=T, n_layer=L, n_head=NH, n_embd=C)


def child(runner, row, steps):
    """Warm up, time `steps` steps; print median tokens/s and this process's peak RSS (MiB)."""
    from vs_pytorch import our_trainer, torch_runner
    cfg, B = model_config(row), ROWS[row][4]
    if runner in OURS:
        trainer = our_trainer(cfg, 2, B, "bf16" if runner == "ours-bf16" else "fp32")
        def step(_):
            return trainer.step()
    else:
        step = torch_runner(cfg, 2, runner)
    step(B)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(B)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{B * cfg.block_size / statistics.median(times):.1f} {peak:.0f}")


def run_child(runner, row, steps):
    """(tokens/s, peak RSS MiB) of one child process, or None if that runner fails here."""
    proc = subprocess.run([sys.executable, __file__, runner, str(row), str(steps)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"    {runner} failed here: {last}", flush=True)
        return None
    tps, rss = proc.stdout.split()[-2:]
    return float(tps), float(rss)


def per_round_ratio(got, ours, theirs):
    """Median over rounds of (fastest of `ours`) / (fastest of `theirs`), or None."""
    ratios = []
    for k in range(len(next(iter(got.values())))):
        a = [got[r][k][0] for r in ours if r in got and got[r][k]]
        b = [got[r][k][0] for r in theirs if r in got and got[r][k]]
        if a and b:
            ratios.append(max(a) / max(b))
    return statistics.median(ratios) if ratios else None


def sweep(rows, repeats, steps, runners=RUNNERS):
    """Run the sweep and print one table row per shape."""
    import os
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{repeats} rounds x {len(runners)} runners per shape, {steps} timed steps each")
    print(f"{'C, L, NH (hs), T, B':26s} " + " ".join(f"{r:>12s}" for r in runners) +
          f" {'fp32 ratio':>10s} {'best ratio':>10s}   peak RSS MiB", flush=True)
    theirs = [r for r in runners if r not in OURS]
    for row in rows:
        C, L, NH, T, B = ROWS[row]
        got = {r: [] for r in runners}
        for _ in range(repeats):
            for r in runners:
                got[r].append(run_child(r, row, steps))
        cells = [f"{statistics.median(g[0] for g in got[r] if g):12.0f}" if any(got[r])
                 else f"{'failed':>12s}" for r in runners]
        ratios = [per_round_ratio(got, ["ours"], ["fp32"]), per_round_ratio(got, OURS, theirs)]
        cells += [f"{x:9.2f}x" if x else f"{'-':>10s}" for x in ratios]
        rss = " / ".join(f"{statistics.median(g[1] for g in got[r] if g):.0f}"
                         if any(got[r]) else "-" for r in runners)
        print(f"{f'{C}, {L}, {NH} (hs {C // NH}), {T}, {B}':26s} {' '.join(cells)}   {rss}",
              flush=True)
        for r in runners:
            print(f"    {r:12s} tokens/s by round: "
                  f"{', '.join(f'{g[0]:.0f}' if g else 'failed' for g in got[r])}", flush=True)


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
