"""Single-worker training throughput of cllm-4.5m (batch 16, block 128, forward + backward + AdamW),
BLAS limited to one thread; where torch is importable, the same model in PyTorch on one thread,
alternated round by round; medians and the ratio.

    timeout 300 python benchmarks/step.py [--rounds 5] [--steps 3] [--batch 16]
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from crystalline.config import preset  # noqa: E402
# Import the kernels (which load SciPy's OpenBLAS, the one Numba calls) BEFORE threadpool_limits:
# threadpoolctl only limits libraries already loaded when the limit is set.
from crystalline.model.gpt import GPT  # noqa: E402,F401


def ours(cfg, B, data):
    from crystalline.model.gpt import GPT
    from crystalline.model.kernels.adamw import adamw_step
    from crystalline.model.kernels.clip import grad_norm, scale_
    model = GPT(cfg, seed=0)
    ws, grads = model.workspace(B), np.zeros_like(model.params)
    m, v = np.zeros_like(model.params), np.zeros_like(model.params)
    state = {"t": 0}

    def step(x, y):
        state["t"] += 1
        loss = model.forward_into(ws, x, y)
        grads.fill(0)
        model.backward_into(ws, grads, 1.0 / x.size)
        norm = grad_norm(grads)
        if norm > 1.0:
            scale_(grads, 1.0 / norm)
        adamw_step(model.params, grads, m, v, model.decay_mask, 1e-3, 0.9, 0.95, 1e-8, 0.1, state["t"])
        return loss
    return step


def theirs(cfg, B):
    import torch
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from test_torch_parity import torch_adamw, torch_train_step
    from crystalline.model.gpt import GPT
    torch.set_num_threads(1)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in GPT(cfg, seed=0).param_views().items()}
    opt = torch_adamw(tp)

    def step(x, y):
        return torch_train_step(tp, opt, cfg, torch.from_numpy(x).long(), torch.from_numpy(y).long())
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps timed per round")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    cfg, _ = preset("cllm-4.5m")
    B, T = args.batch, cfg.block_size
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, (2, B, T)).astype(np.int32) for _ in range(4)]
    try:
        import torch  # noqa: F401  (loaded before the limit too)
    except ImportError:
        pass
    with threadpool_limits(1):
        from threadpoolctl import threadpool_info
        print("BLAS threads:", sorted({(i["prefix"], i["num_threads"]) for i in threadpool_info()}))
        t0 = time.perf_counter()
        runners = {"crystalline": ours(cfg, B, batches)}
        runners["crystalline"](*batches[0])
        print(f"crystalline compile + first step: {time.perf_counter() - t0:.2f} s")
        try:
            runners["pytorch"] = theirs(cfg, B)
            runners["pytorch"](*batches[0])
        except ImportError:
            print("torch not importable: crystalline only")
        times = {k: [] for k in runners}
        for r in range(args.rounds):
            for name, step in runners.items():
                t = time.perf_counter()
                for s in range(args.steps):
                    step(*batches[(r + s) % 4])
                times[name].append((time.perf_counter() - t) / args.steps)
    tokens = B * T
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:12s} median step {med * 1e3:8.1f} ms  {tokens / med:8.0f} tokens/s  "
              f"(rounds: {', '.join(f'{tokens / t:.0f}' for t in ts)})")
    if "pytorch" in times:
        ratio = statistics.median(times["pytorch"]) / statistics.median(times["crystalline"])
        paired = statistics.median(p / c for p, c in zip(times["pytorch"], times["crystalline"]))
        print(f"crystalline / pytorch throughput: {ratio:.2f}x of medians, {paired:.2f}x median of "
              "per-round ratios (1 thread each; rounds alternate, so load on a shared machine "
              "hits both)")


if __name__ == "__main__":
    main()
