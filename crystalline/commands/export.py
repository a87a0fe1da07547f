"""`crystalline export`: write a checkpoint's model for the Hugging Face or PyTorch world.

    crystalline export runs/tiny/checkpoint.safetensors --format hf --out gpt2-tiny/
    crystalline export runs/tiny/checkpoint.safetensors --format torch --out nanogpt-tiny/

hf: config.json, model.safetensors and (byte and BPE tokenizers) tokenizer.json that
transformers' GPT2LMHeadModel and AutoTokenizer load. torch: model.safetensors with nanoGPT's
parameter names (its GPT with bias=True loads it) and config.json with its GPTConfig fields.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 or nanoGPT model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path, metavar="CKPT", help="checkpoint written by crystalline train")
    p.add_argument("--format", choices=["hf", "torch"], default="hf",
                   help="hf: transformers' GPT2LMHeadModel folder; torch: nanoGPT state dict")
    p.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    p.set_defaults(func=run)


def run(args) -> int:
    from crystalline.checkpoint import load_model
    from crystalline.export import to_hf, to_nanogpt
    model, tokenizer, _ = load_model(args.ckpt)
    if args.format == "hf":
        out = to_hf(model, tokenizer, args.out)
        if tokenizer.name in ("byte", "bpe"):
            print(f"wrote {out}: config.json, model.safetensors, tokenizer.json, tokenizer_config.json")
        else:
            print(f"wrote {out}: config.json, model.safetensors (no tokenizer: the {tokenizer.name} "
                  "tokenizer has no Hugging Face form that gives the same ids)")
    else:
        out = to_nanogpt(model, args.out)
        print(f"wrote {out}: model.safetensors (nanoGPT names), config.json")
    return 0
