"""`crystalline data ...`: look at corpora and prepare SQuAD.

    crystalline data info data/tinyshakespeare.txt [--tokenizer byte|word|bpe|PATH.json] [--vocab-size N]
    crystalline data info data/ --list          # which files a folder corpus takes and skips
    crystalline data squad train-v2.0.json [-o squad.txt]
    crystalline data squad --download 2.0 [--split train|dev] [--dest data/]
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect corpora, render or download SQuAD",
                                   description="Inspect corpora; render or download SQuAD.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    info = actions.add_parser("info", help="bytes, tokens and vocabulary of a corpus",
                              description="Print the size of a corpus (file, folder or squad:PATH).")
    info.add_argument("path", metavar="PATH", help="text file, folder of text files, or squad:FILE.json")
    info.add_argument("--tokenizer", default="byte", metavar="byte|word|bpe|PATH.json",
                      help="tokenizer to count with (word, bpe: trained on this corpus; or a "
                           "tokenizer JSON file); default byte")
    info.add_argument("--vocab-size", type=int, default=None,
                      help="vocabulary of the word (default 8192) or bpe (default 4096) tokenizer")
    info.add_argument("--list", action="store_true",
                      help="first list every file of a folder corpus: taken, or skipped and why")
    info.add_argument("--cache-dir", default=None,
                      help="token cache folder (default $CRYSTALLINE_CACHE or ~/.cache/crystalline)")
    info.set_defaults(func=run_info)

    squad = actions.add_parser("squad", help="render a SQuAD JSON file as text, or download one",
                               description="Render a SQuAD v1.1/v2.0 JSON file as training text, "
                                           "or download the official file.")
    squad.add_argument("path", metavar="PATH", nargs="?", help="SQuAD JSON file to render")
    squad.add_argument("-o", "--output", metavar="OUT", help="write the text here (default: stdout)")
    squad.add_argument("--download", choices=["1.1", "2.0"], metavar="{1.1,2.0}",
                       help="download this SQuAD version instead of rendering")
    squad.add_argument("--split", choices=["train", "dev"], default="train",
                       help="which file to download (default train)")
    squad.add_argument("--dest", default=".", help="folder for the download (default: .)")
    squad.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    squad.set_defaults(func=run_squad)


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crystalline.data.corpus import corpus_info, folder_entries
    from crystalline.data.tokenizers import tokenizer_spec
    if args.list and args.path and Path(args.path).is_dir():
        for entry in folder_entries(args.path):
            print(f"skip  {entry.name}  ({entry.skipped})" if entry.skipped else f"take  {entry.name}")
    info = corpus_info(args.path, tokenizer=tokenizer_spec(args.tokenizer),
                       cache_dir=args.cache_dir, vocab_size=args.vocab_size)
    if args.list and not Path(args.path).is_dir():
        print(f"take  {args.path}")
    rows = [("source", info["source"])]
    if Path(args.path).is_dir():
        rows.append(("files", f"{info['files']:,}"))
    rows += [("bytes", f"{info['bytes']:,}"), ("tokens", f"{info['tokens']:,}"),
             ("vocabulary size", f"{info['vocab_size']:,}"), ("tokenizer", info["tokenizer"]),
             ("bytes per token", f"{info['bytes'] / info['tokens']:.3f}")]
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name + ':':<{width}}{value}")
    return 0


def run_squad(args: argparse.Namespace) -> int:
    from crystalline.errors import DataError
    if (args.path is None) == (args.download is None):
        raise DataError("crystalline data squad: give either PATH (a SQuAD JSON file to render) "
                        "or --download 1.1|2.0, not both or neither")
    if args.download is not None:
        from crystalline.data.squad import download_squad
        path = download_squad(args.download, args.dest, split=args.split, timeout=args.timeout)
        print(path)
        return 0
    from crystalline.data.squad import render_squad_file
    text = render_squad_file(args.path)
    if args.output:
        from crystalline.io import atomic_write_bytes
        atomic_write_bytes(args.output, text.encode("utf-8"))
        print(f"wrote {len(text.encode('utf-8'))} bytes to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
