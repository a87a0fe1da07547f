"""Generated tokens/s: crystalline with the KV cache, without it, and transformers' generate on
the same model exported with crystalline.export.to_hf (same machine, same number of threads).

    timeout 900 python benchmarks/sample.py [--model cllm-4.5m|gpt2] [--rounds 3] [--threads 1]

The model is a randomly initialised GPT (speed does not depend on the weights): cllm-4.5m
(d=256, 6 layers, T=128, byte vocabulary) or GPT-2 small's shape (124M parameters, d=768,
12 layers, vocabulary 50,257, T=1024). One sequence, a --prompt-token prompt, --tokens new
tokens, greedy (top-k 1 / do_sample=False), so the three runners must produce the same tokens
(checked and printed). BLAS (numpy's OpenBLAS, through threadpoolctl) and torch use --threads
threads. The runners alternate round by round, so load from other users hits all of them;
medians of the rounds, and the median of per-round ratios.
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from crystalline.config import ModelConfig  # noqa: E402
from crystalline.data.tokenizers import ByteTokenizer  # noqa: E402
from crystalline.export import to_hf  # noqa: E402
from crystalline.model.gpt import GPT  # noqa: E402
from crystalline.model.kernels import blas  # noqa: E402,F401  (load OpenBLAS before limiting it)
from threadpoolctl import threadpool_limits  # noqa: E402

MODELS = {
    "cllm-4.5m": ModelConfig(vocab_size=256, block_size=128, n_layer=6, n_head=8, n_embd=256),
    "gpt2": ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="cllm-4.5m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--tokens", type=int, default=112, help="new tokens per run")
    args = ap.parse_args()

    import torch
    import transformers
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    cfg = MODELS[args.model]
    if args.prompt + args.tokens > cfg.block_size:
        sys.exit(f"--prompt + --tokens must fit in block_size = {cfg.block_size}")
    model = GPT(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, args.prompt)).astype(np.int32)
    folder = tempfile.mkdtemp()
    to_hf(model, ByteTokenizer() if cfg.vocab_size == 256 else None, folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    torch_prompt = torch.tensor(prompt, dtype=torch.long)

    def ours(cache):
        return lambda: model.generate(prompt, args.tokens, top_k=1, cache=cache)[0]

    def theirs():
        with torch.no_grad():
            out = hf.generate(torch_prompt, max_new_tokens=args.tokens, do_sample=False,
                              pad_token_id=0, use_cache=True)
        return out[0].numpy()

    runners = {"crystalline, KV cache": ours(True), "crystalline, no cache": ours(False),
               "transformers generate": theirs}
    print(f"model {args.model}: {model.num_parameters / 1e6:.1f}M parameters; prompt {args.prompt}, "
          f"{args.tokens} new tokens, greedy, {args.threads} thread(s); torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        outputs = {name: run() for name, run in runners.items()}      # warm up (compile) once
        rates = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                rates[name].append(args.tokens / (time.perf_counter() - start))
    first = outputs["crystalline, KV cache"]
    same = {name: bool(np.array_equal(out, first)) for name, out in outputs.items()}
    cached = rates["crystalline, KV cache"]
    print(f"{'':24} {'tokens/s':>10} {'KV cache vs this':>17}  same tokens")
    for name, r in rates.items():
        ratio = statistics.median(c / x for c, x in zip(cached, r))
        print(f"{name:24} {statistics.median(r):10,.1f} {ratio:16.2f}x  {same[name]}")


if __name__ == "__main__":
    main()
