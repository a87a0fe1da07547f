"""`crystalline sample`: generate text from a checkpoint.

    crystalline sample --ckpt runs/tiny/checkpoint.safetensors --prompt "ROMEO:" --tokens 200
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate text from a checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by crystalline train")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Refuse values that cannot be represented or generated, before the checkpoint is read."""
    from crystalline.model.sample import check_sampling
    check_sampling(None, args.tokens, args.temperature, args.top_k, args.seed,
                   names={"max_new_tokens": "--tokens", "temperature": "--temperature",
                          "top_k": "--top-k", "seed": "--seed"})


def run(args) -> int:
    from crystalline.checkpoint import load_model
    check_args(args)
    from crystalline.sampling import sample_text
    model, tokenizer, _ = load_model(args.ckpt)
    print(sample_text(model, tokenizer, args.prompt, args.tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed))
    return 0
