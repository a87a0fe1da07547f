"""`crystalline train`: train a GPT on the sphere tree, writing a run folder.

    crystalline train --preset tiny --steps 200 --workers 2
    crystalline train --data squad:train-v1.1.json --config run.toml --run-dir runs/squad
    crystalline train --resume runs/squad --steps 500     # or --resume runs/squad/checkpoint.safetensors

The run folder holds config.toml, metrics.jsonl (one JSON object per step) and
checkpoint.safetensors (written every --ckpt-interval steps and at the end). It belongs to one
run: a folder that holds a run is refused (--resume continues it, --overwrite replaces it), and
it is locked while training. Ctrl-C or SIGTERM closes the progress bar, writes a final
consistent checkpoint and exits with code 130 or 143.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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
    p.add_argument("--resume", type=Path, metavar="RUN_DIR|CKPT",
                   help="continue a run: its folder, or a checkpoint file (written to the checkpoint's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace the run held by --run-dir")
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


def _make_trainer(args):
    from crystalline.data.corpus import bundled_corpus
    from crystalline.engine.trainer import Trainer
    from crystalline.rundir import resume_paths
    if args.distributed:
        from crystalline.distributed import DistributedTrainer as Trainer
    if args.resume:
        return Trainer.load(resume_paths(args.resume)[0], corpus=args.data, workers=args.workers,
                            sync=args.sync)
    model_cfg, train_cfg = _configs(args)
    data = args.data or str(bundled_corpus())
    return Trainer(model_cfg, train_cfg, data, workers=args.workers, sync=args.sync,
                   tokenizer=args.tokenizer)


def run(args) -> int:
    try:
        if not args.distributed:
            return _run(args)
        from crystalline.distributed import abort_on_error
        with abort_on_error():      # a rank that raises ends every rank, never a hang
            return _run(args)
    except MemoryError:
        from crystalline.errors import ConfigError
        raise ConfigError("ran out of memory; lower --batch-size, --workers or the model size") from None


def _run(args) -> int:
    from crystalline import signals
    from crystalline.engine.trainer import TrainingStopped
    from crystalline.errors import ConfigError
    from crystalline.rundir import open_run_folder, resume_paths
    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps {args.steps} is invalid: use a positive number of steps")
    if args.ckpt_interval <= 0:
        raise ConfigError(f"--ckpt-interval {args.ckpt_interval} is invalid: use a positive number")
    resume = resume_paths(args.resume) if args.resume else None
    run_dir = args.run_dir or (resume[1] if resume else
                               Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    root = not args.distributed or _mpi_rank() == 0    # under MPI only rank 0 prints and writes files
    folder = open_run_folder(run_dir, resume and resume[0], args.overwrite) if root else None
    try:
        trainer = _make_trainer(args)
        signals.watch(trainer, escalate=not args.distributed)   # a signal now ends training cleanly
        steps = args.steps or max(1, trainer.train_cfg.max_steps - trainer.steps_done)
        ckpt = run_dir / "checkpoint.safetensors"
        if root:
            folder.begin(trainer, overwrite=args.overwrite, resumed=resume is not None)
            print(f"{trainer!r}\ncorpus {trainer.corpus.source}: {len(trainer.corpus.tokens):,} tokens "
                  f"({trainer.corpus.tokenizer.name} tokenizer)\nrun folder {run_dir}")
        interrupted = False
        saved = [trainer.steps_done]          # a checkpoint is written only for steps it lacks
        with open(folder.metrics if root else os.devnull, "a", encoding="utf-8") as metrics:
            try:
                _train(trainer, steps, args, metrics, ckpt, saved)   # Ctrl-C / SIGTERM: TrainingStopped
            except TrainingStopped:
                interrupted = True
            finally:
                trainer.close()
                if trainer.steps_done != saved[0]:
                    trainer.save(ckpt)
                    saved[0] = trainer.steps_done
        signals.watch(None)                   # everything is written: a signal now ends at once
    finally:
        if folder is not None:
            folder.close()
    code = signals.exit_code() or (130 if interrupted else 0)
    last = trainer.history[-1] if len(trainer.history) else {}
    state = "interrupted" if code else "done"
    if root:
        written = f"checkpoint {ckpt}" if ckpt.exists() else "no checkpoint (no step was completed)"
        print(f"{state} at step {trainer.steps_done}: loss {last.get('loss', float('nan')):.4f}; {written}")
        if args.sample > 0 and not code:
            _print_sample(trainer, args.sample)
    return code or 0


def _mpi_rank() -> int:
    from crystalline.distributed import _mpi
    return _mpi().COMM_WORLD.rank


def _train(trainer, steps, args, metrics, ckpt, saved) -> None:
    def after_step(record):
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if trainer.steps_done % args.ckpt_interval == 0:
            trainer.save(ckpt)
            saved[0] = trainer.steps_done

    trainer.run(steps, progress=not args.no_progress, on_step=after_step)


def _print_sample(trainer, tokens: int) -> None:
    """A sample continuing the corpus's first few tokens, to see what the model learnt."""
    from crystalline.sampling import sample_text
    tokenizer = trainer.corpus.tokenizer
    prompt = tokenizer.decode(trainer.corpus.tokens[:8])
    text = sample_text(trainer.model, tokenizer, prompt, tokens, temperature=0.8, seed=0)
    print(f"--- sample (temperature 0.8) ---\n{text}")
