"""`crystalline train`: train a GPT on the sphere tree, writing a run folder.

    crystalline train --preset tiny --steps 200 --workers 2
    crystalline train --data squad:train-v1.1.json --config run.toml --run-dir runs/squad
    crystalline train --resume runs/squad/checkpoint.safetensors --steps 500

The run folder holds config.toml, metrics.jsonl (one JSON object per step) and
checkpoint.safetensors (written every --ckpt-interval steps and at the end), and the telemetry
that crystalline.open_run reads (telemetry-rank<r>.bin). Ctrl-C closes the progress bar, writes
a final consistent checkpoint and exits with code 130. A "stop" request in the folder's
control.json (Run.request("stop")) ends training after the current step, writes the final
checkpoint and exits with 0; "pause", "resume" and "resize" act between steps too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

EXIT_INTERRUPTED = 130


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on the sphere tree",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="tiny | small | cllm-4.5m (default: tiny)")
    p.add_argument("--config", type=Path, help="a TOML file with [model] and [train] tables")
    p.add_argument("--data", help="text file, folder or squad:PATH (default: bundled Tiny Shakespeare)")
    p.add_argument("--tokenizer", choices=["byte", "word"], default="byte")
    p.add_argument("--steps", type=int, help="steps to run (default: the config's max_steps)")
    p.add_argument("--workers", type=int, help="worker spheres (default: this machine's cores)")
    p.add_argument("--sync", choices=["lock_free", "model_lock"], default="lock_free")
    p.add_argument("--batch-size", type=int, help="sequences per global step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-interval", type=int, help="steps between validation losses (0: off)")
    p.add_argument("--run-dir", type=Path, help="output folder (default: runs/<preset>-<time>)")
    p.add_argument("--ckpt-interval", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", type=Path, help="continue from this checkpoint")
    p.add_argument("--sample", type=int, default=200, metavar="N",
                   help="print N sampled tokens at the end (0: none; default 200)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="split each batch over the MPI ranks: mpiexec -n R crystalline train --distributed")
    p.set_defaults(func=run)


def _configs(args):
    from crystalline.config import load_toml, preset
    model_cfg, train_cfg = load_toml(args.config) if args.config else preset(args.preset)
    overrides = {"batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed,
                 "eval_interval": args.eval_interval}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "learning_rate" in overrides:
        overrides["min_lr"] = min(train_cfg.min_lr, overrides["learning_rate"])
    return model_cfg, train_cfg.replace(**overrides)


def _make_trainer(args, run_dir):
    from crystalline.data.corpus import bundled_corpus
    from crystalline.engine.trainer import Trainer
    if args.distributed:
        from crystalline.distributed import DistributedTrainer as Trainer
    if args.resume:
        return Trainer.load(args.resume, corpus=args.data, workers=args.workers, sync=args.sync,
                            run_dir=run_dir)
    model_cfg, train_cfg = _configs(args)
    data = args.data or str(bundled_corpus())
    return Trainer(model_cfg, train_cfg, data, workers=args.workers, sync=args.sync,
                   tokenizer=args.tokenizer, run_dir=run_dir)


def run(args) -> int:
    if not args.distributed:
        return _run(args)
    from crystalline.distributed import abort_on_error
    with abort_on_error():      # a rank that raises ends every rank, never a hang
        return _run(args)


def _run(args) -> int:
    from crystalline.config import save_toml
    from crystalline.engine.trainer import TrainingStopped
    from crystalline.errors import ConfigError
    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps {args.steps} is invalid: use a positive number of steps")
    if args.ckpt_interval <= 0:
        raise ConfigError(f"--ckpt-interval {args.ckpt_interval} is invalid: use a positive number")
    run_dir = args.run_dir or (args.resume.parent if args.resume else
                               Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.distributed:        # every rank writes its telemetry there: rank 0's name for all
        from crystalline.distributed import _mpi
        run_dir = _mpi().COMM_WORLD.bcast(run_dir, root=0)
    trainer = _make_trainer(args, run_dir)     # its telemetry: run_dir/telemetry-rank<r>.bin
    root = getattr(trainer, "is_root", True)   # under MPI only rank 0 prints and writes files
    steps = args.steps or max(1, trainer.train_cfg.max_steps - trainer.steps_done)
    ckpt = run_dir / "checkpoint.safetensors"
    if root:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_toml(run_dir / "config.toml", trainer.model_cfg, trainer.train_cfg)
        print(f"{trainer!r}\ncorpus {trainer.corpus.source}: {len(trainer.corpus.tokens):,} tokens "
              f"({trainer.corpus.tokenizer.name} tokenizer)\nrun folder {run_dir}")
    interrupted = False
    with open(run_dir / "metrics.jsonl" if root else os.devnull, "a", encoding="utf-8") as metrics:
        try:
            _train(trainer, steps, args, metrics, ckpt)      # Ctrl-C: TrainingStopped
        except (KeyboardInterrupt, TrainingStopped):
            interrupted = True
        finally:
            trainer.close()
            trainer.save(ckpt)
    last = trainer.history[-1] if len(trainer.history) else {}
    state = "interrupted" if interrupted else "stopped (control file)" if trainer.stopped_by_control else "done"
    if root:
        print(f"{state} at step {trainer.steps_done}: loss {last.get('loss', float('nan')):.4f}; "
              f"checkpoint {ckpt}")
        if args.sample > 0 and not interrupted and not trainer.stopped_by_control:
            _print_sample(trainer, args.sample)
    return EXIT_INTERRUPTED if interrupted else 0


def _train(trainer, steps, args, metrics, ckpt) -> None:
    def after_step(record):
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if trainer.steps_done % args.ckpt_interval == 0:
            trainer.save(ckpt)

    trainer.run(steps, progress=not args.no_progress, on_step=after_step)


def _print_sample(trainer, tokens: int) -> None:
    """A sample continuing the corpus's first few tokens, to see what the model learnt."""
    from crystalline.sampling import sample_text
    tokenizer = trainer.corpus.tokenizer
    prompt = tokenizer.decode(trainer.corpus.tokens[:8])
    text = sample_text(trainer.model, tokenizer, prompt, tokens, temperature=0.8, seed=0)
    print(f"--- sample (temperature 0.8) ---\n{text}")
