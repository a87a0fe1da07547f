"""`crystalline train`: train a GPT on the sphere tree, writing a run folder.

    crystalline train --preset tiny --steps 200 --workers 2
    crystalline train --data squad:train-v1.1.json --config run.toml --run-dir runs/squad
    crystalline train --resume runs/squad --steps 500     # or --resume runs/squad/checkpoint.safetensors
    crystalline train --tokenizer bpe --vocab-size 4096 --preset small
    crystalline train --init-from gpt2-folder/ --data notes/ --lr 1e-4      # fine-tune GPT-2

--steps N on a new run also sets the learning-rate schedule's length (max_steps = N) unless
--max-steps says otherwise. --resume continues the same run: flags that would change it
(--preset, --config, --tokenizer, --batch-size, --seed, --lr, --max-steps, another corpus) are
refused; see crystalline.resume.

The run folder holds config.toml, metrics.jsonl (one JSON object per step), TensorBoard
event files (with the `tensorboard` extra) and checkpoint.safetensors (written every
--ckpt-interval steps and at the end), and the telemetry that crystalline.open_run reads
(telemetry-rank<r>.bin). It belongs to one run: a folder that holds a run is refused (--resume
continues it, --overwrite replaces it), and it is locked while training. Ctrl-C or SIGTERM
closes the progress bar, writes a final consistent checkpoint and exits with code 130 or 143.
A "stop" request in the folder's control.json (Run.request("stop")) ends training after the
current step, writes the final checkpoint and exits with 0; "pause", "resume" and "resize" act
between steps too.
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
    p.add_argument("--preset", help="tiny | small | cllm-4.5m | shakespeare-char (default: tiny)")
    p.add_argument("--config", type=Path, help="a TOML file with [model] and [train] tables")
    p.add_argument("--data", help="text file, folder or squad:PATH (default: bundled Tiny Shakespeare)")
    p.add_argument("--tokenizer", metavar="byte|word|bpe|PATH.json",
                   help="byte (default), word or bpe (trained on the corpus), or a tokenizer JSON "
                        "file (crystalline's or a Hugging Face tokenizer.json)")
    p.add_argument("--vocab-size", type=int,
                   help="vocabulary of the word (default 8192) or bpe (default 4096) tokenizer")
    p.add_argument("--init-from", type=Path, metavar="DIR",
                   help="start from a local GPT-2-architecture folder (config.json, "
                        "model.safetensors, tokenizer files), e.g. to fine-tune GPT-2")
    p.add_argument("--steps", type=int, help="steps to run (default: the config's max_steps); on a "
                   "new run also the schedule's length")
    p.add_argument("--max-steps", type=int, help="length of the learning-rate schedule, if not --steps")
    p.add_argument("--workers", type=int, help="worker spheres (default: this machine's cores)")
    p.add_argument("--sync", choices=["lock_free", "model_lock"], default="lock_free")
    p.add_argument("--batch-size", type=int, help="sequences per global step")
    p.add_argument("--balance", choices=["static", "dynamic"], default="static",
                   help="static: fixed slices; dynamic: workers take chunks as they finish")
    p.add_argument("--straggler", action="append", default=[], metavar="W:F",
                   help="slow worker W by factor F >= 1 (repeatable), e.g. --straggler 1:2")
    p.add_argument("--straggler-mode", choices=["sleep", "busy"],
                   help="a straggler sleeps (frees its core) or spins (default: sleep)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="bf16: matmuls on bf16 copies, fp32 accumulation (needs avx512_bf16)")
    p.add_argument("--dropout", type=float, help="drop probability in training, 0 <= p < 1 "
                   "(embeddings, attention, residual branches; default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-interval", type=int, help="steps between validation losses (0: off)")
    p.add_argument("--run-dir", type=Path, help="output folder (default: runs/<preset>-<time>)")
    p.add_argument("--ckpt-interval", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR|CKPT",
                   help="continue a run: its folder, or a checkpoint file (written to the checkpoint's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace the run held by --run-dir")
    p.add_argument("--data-changed-ok", action="store_true",
                   help="resume on a corpus whose bytes differ from the checkpoint's")
    p.add_argument("--sample", type=int, default=200, metavar="N",
                   help="print N sampled tokens at the end (0: none; default 200)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="split each batch over the MPI ranks: mpiexec -n R crystalline train --distributed")
    p.set_defaults(func=run)


def _configs(args):
    from crystalline.config import load_toml, preset, schedule_for_run
    model_cfg, train_cfg = load_toml(args.config) if args.config else preset(args.preset or "tiny")
    overrides = {"batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed,
                 "eval_interval": args.eval_interval, "precision": args.precision}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "learning_rate" in overrides:
        overrides["min_lr"] = min(train_cfg.min_lr, overrides["learning_rate"])
    if args.dropout is not None:
        model_cfg = model_cfg.replace(dropout=args.dropout)
    return model_cfg, schedule_for_run(train_cfg.replace(**overrides), args.steps, args.max_steps)


def _make_trainer(args, run_dir):
    from crystalline.data.corpus import bundled_corpus, load_corpus
    from crystalline.data.tokenizers import tokenizer_spec
    from crystalline.engine.trainer import Trainer
    from crystalline.rundir import resume_paths
    if args.distributed:
        from crystalline.distributed import DistributedTrainer as Trainer
    if args.resume:
        from crystalline.resume import resume_trainer
        return resume_trainer(Trainer, resume_paths(args.resume)[0], args, run_dir=run_dir)
    model_cfg, train_cfg = _configs(args)
    data = args.data if args.data is not None else str(bundled_corpus())
    if args.init_from:
        from crystalline.export import trainer_from_hf
        return trainer_from_hf(Trainer, args.init_from, train_cfg, data,
                               tokenizer_spec(args.tokenizer), args.vocab_size,
                               workers=args.workers, sync=args.sync, run_dir=run_dir,
                               dropout=model_cfg.dropout if args.dropout is not None else None)
    corpus = load_corpus(data, tokenizer_spec(args.tokenizer), vocab_size=args.vocab_size)
    return Trainer(model_cfg, train_cfg, corpus, workers=args.workers, sync=args.sync, run_dir=run_dir)


def _stragglers(args) -> dict[int, float]:
    """--straggler W:F (repeatable) as {worker: factor}; checked against the tree later."""
    from crystalline.engine.balance import parse_straggler
    from crystalline.errors import ConfigError
    stragglers = dict(parse_straggler(text) for text in args.straggler)
    if len(stragglers) < len(args.straggler):
        raise ConfigError("--straggler names a worker twice; give each worker one factor")
    if args.straggler_mode and not stragglers:
        raise ConfigError("--straggler-mode has no straggler to act on; add --straggler W:F")
    return stragglers


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
    from crystalline.config import MAX_SAMPLE_TOKENS, MAX_STEPS
    from crystalline.engine.trainer import TrainingStopped
    from crystalline.errors import ConfigError
    from crystalline.resume import steps_to_run
    from crystalline.rundir import open_run_folder, resume_paths
    from crystalline.tensorboard import TensorBoardLog
    for flag, value, low, high in (("--steps", args.steps, 1, MAX_STEPS),
                                   ("--ckpt-interval", args.ckpt_interval, 1, MAX_STEPS),
                                   ("--sample", args.sample, 0, MAX_SAMPLE_TOKENS)):
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{flag} {value} is invalid: use {low} to {high:,}")
    if args.resume and (args.init_from or args.vocab_size is not None):
        raise ConfigError(f"--{'init-from' if args.init_from else 'vocab-size'} cannot apply to "
                          "--resume, which continues a run with its own model and tokenizer")
    if args.data_changed_ok and not args.resume:
        raise ConfigError("--data-changed-ok only applies with --resume; drop it for a new run")
    stragglers = _stragglers(args)
    resume = resume_paths(args.resume) if args.resume else None
    run_dir = args.run_dir or (resume[1] if resume else
                               Path("runs") / f"{args.preset or 'tiny'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.distributed:        # every rank writes its telemetry there: rank 0's name for all
        from crystalline.distributed import _mpi
        run_dir = _mpi().COMM_WORLD.bcast(run_dir, root=0)
    root = not args.distributed or _mpi_rank() == 0    # under MPI only rank 0 prints and writes files
    folder = open_run_folder(run_dir, resume and resume[0], args.overwrite) if root else None
    try:
        trainer = _make_trainer(args, run_dir)     # its telemetry: run_dir/telemetry-rank<r>.bin
        trainer.set_balance(args.balance)          # no thread runs before the first step
        trainer.set_stragglers(stragglers, args.straggler_mode or "sleep")
        signals.watch(trainer, escalate=not args.distributed)   # a signal now ends training cleanly
        steps = steps_to_run(args, trainer)
        ckpt = run_dir / "checkpoint.safetensors"
        if root:
            folder.begin(trainer, overwrite=args.overwrite, resumed=resume is not None)
            print(f"{trainer!r}\ncorpus {trainer.corpus.source}: {len(trainer.corpus.tokens):,} tokens "
                  f"({trainer.corpus.tokenizer.name} tokenizer)\nrun folder {run_dir}")
            print(_schedule(trainer.train_cfg))
        interrupted, val_loss = False, None
        saved = [trainer.steps_done]          # a checkpoint is written only for steps it lacks
        tensorboard = TensorBoardLog(run_dir) if root else None
        with open(folder.metrics if root else os.devnull, "a", encoding="utf-8") as metrics:
            try:
                _train(trainer, steps, args, metrics, ckpt, saved, tensorboard)   # Ctrl-C / SIGTERM: TrainingStopped
                val_loss = _final_val_loss(trainer)
            except TrainingStopped:
                interrupted = True
            finally:
                trainer.close()
                if trainer.steps_done != saved[0]:
                    trainer.save(ckpt)
                    saved[0] = trainer.steps_done
                if tensorboard is not None:
                    tensorboard.close()
        signals.watch(None)                   # everything is written: a signal now ends at once
    finally:
        if folder is not None:
            folder.close()
    code = signals.exit_code() or (130 if interrupted else 0)
    last = trainer.history[-1] if len(trainer.history) else {}
    state = "interrupted" if code else "stopped (control file)" if trainer.stopped_by_control else "done"
    if root:
        written = f"checkpoint {ckpt}" if ckpt.exists() else "no checkpoint (no step was completed)"
        val = "" if val_loss is None else f", validation loss {val_loss:.4f}"
        print(f"{state} at step {trainer.steps_done}: loss {last.get('loss', float('nan')):.4f}{val}; {written}")
        if args.sample > 0 and not code and not trainer.stopped_by_control:
            _print_sample(trainer, args.sample)
    return code or 0


def _mpi_rank() -> int:
    from crystalline.distributed import _mpi
    return _mpi().COMM_WORLD.rank


def _train(trainer, steps, args, metrics, ckpt, saved, tensorboard=None) -> None:
    def after_step(record):
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if tensorboard is not None:
            tensorboard.write(record)
        if trainer.steps_done % args.ckpt_interval == 0:
            trainer.save(ckpt)
            saved[0] = trainer.steps_done

    trainer.run(steps, progress=not args.no_progress, on_step=after_step)


def _schedule(cfg) -> str:
    return (f"learning rate: warm-up over {cfg.warmup_steps:,} steps to {cfg.learning_rate:g}, cosine "
            f"to {cfg.min_lr:g} at step {cfg.max_steps:,} (max_steps)")


def _final_val_loss(trainer) -> float | None:
    """The last step's validation loss, measured now if that step had none (None: no held-out data)."""
    if trainer.val_batches is None:
        return None
    last = trainer.history[-1] if len(trainer.history) else {}
    return last["val_loss"] if "val_loss" in last else trainer.evaluate()


def _print_sample(trainer, tokens: int) -> None:
    """A sample continuing the corpus's first few tokens, to see what the model learnt."""
    from crystalline.sampling import sample_text
    tokenizer = trainer.corpus.tokenizer
    prompt = tokenizer.decode(trainer.corpus.tokens[:8])
    text = sample_text(trainer.model, tokenizer, prompt, tokens, temperature=0.8, seed=0)
    print(f"--- sample (temperature 0.8) ---\n{text}")
