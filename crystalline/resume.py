"""What `crystalline train --resume CKPT` may change, and what it refuses.

    trainer = resume_trainer(Trainer, ckpt, args)    # args: the train command's parsed flags

A resumed run continues the run that wrote the checkpoint, exactly as if it had never stopped
(each step's batch is a function of the seed and the step; its learning rate, of the step and
the schedule). So, per flag:

- applied (the config fields among them are recorded in config.toml and the next checkpoint):
  --steps (steps to run now), --eval-interval, --ckpt-interval, --workers, --sync, --sample,
  --no-progress, --run-dir, --distributed, and --data for the same text at another path;
- refused when it differs from the checkpoint (exit 2, naming the flag): --preset and --config
  (the model's shape and every hyperparameter are the checkpoint's), --dropout (the model's
  drop probability), --tokenizer (the token
  ids the model learnt), --batch-size and --seed (which sequences each step draws), --lr and
  --max-steps (the learning-rate schedule), --precision (the arithmetic of every step; the
  checkpoint's precision carries over). A new run (without --resume) changes them.

The checkpoint records the SHA-256 of the corpus bytes it trained on; a corpus whose bytes
differ is refused unless --data-changed-ok says it is meant. A checkpoint written before the
hash was recorded resumes with a warning that the corpus cannot be checked.
"""

from __future__ import annotations

import sys

from crystalline.errors import ConfigError, DataError

# flag -> (argparse attribute, TrainConfig field, what changing it would break)
FIXED_TRAIN_FLAGS = {
    "--batch-size": ("batch_size", "batch_size", "which sequences each step draws"),
    "--seed": ("seed", "seed", "which sequences each step draws"),
    "--lr": ("lr", "learning_rate", "the learning-rate schedule"),
    "--max-steps": ("max_steps", "max_steps", "the learning-rate schedule"),
    "--precision": ("precision", "precision", "the arithmetic of every step"),
}


def check_flags(args, meta: dict, ckpt) -> None:
    """Refuse the flags a resumed run cannot take (see the module docstring)."""
    for flag, given in (("--preset", args.preset), ("--config", args.config)):
        if given is not None:
            raise ConfigError(f"{flag} cannot change a resumed run: {ckpt} holds its model and "
                              f"training config; drop {flag}, or start a new run without --resume")
    saved_dropout = meta["model_config"].get("dropout", 0.0)
    if args.dropout is not None and args.dropout != saved_dropout:
        raise ConfigError(f"--dropout {args.dropout} cannot change a resumed run (dropout = "
                          f"{saved_dropout} in {ckpt}); drop --dropout, or start a new run")
    kind = meta["tokenizer"].get("kind")
    if args.tokenizer is not None and args.tokenizer != kind:
        raise ConfigError(f"--tokenizer {args.tokenizer} cannot change a resumed run: the model in "
                          f"{ckpt} learnt {kind} token ids; drop --tokenizer, or start a new run")
    for flag, (attr, field, breaks) in FIXED_TRAIN_FLAGS.items():
        # a checkpoint written before the precision field trained in fp32
        given, saved = getattr(args, attr), meta["train_config"].get(field, "fp32")
        if given is not None and given != saved:
            raise ConfigError(f"{flag} {given} cannot change a resumed run ({field} = {saved} in "
                              f"{ckpt}): it would change {breaks}; drop {flag}, or start a new run")


def check_corpus(corpus, meta: dict, data_changed_ok: bool, ckpt) -> None:
    """Refuse a corpus whose bytes differ from those the checkpoint trained on."""
    saved = meta.get("data_sha256")
    if saved is None:
        print(f"crystalline: warning: {ckpt} predates corpus hashes, so the corpus cannot be "
              "checked to be the one it trained on", file=sys.stderr)
    elif saved != corpus.sha256 and not data_changed_ok:
        raise DataError(f"the corpus {corpus.source} differs from the one {ckpt} trained on "
                        f"({meta['data_source']}: SHA-256 {saved[:12]}..., now {corpus.sha256[:12]}...); "
                        "pass the same text, or --data-changed-ok to train on this one")


def resume_trainer(trainer_cls, ckpt, args, run_dir=None):
    """The trainer restored from the checkpoint `ckpt`, with the flags a resume may change applied."""
    from crystalline.checkpoint import read_checkpoint
    _, meta = read_checkpoint(ckpt)
    check_flags(args, meta, ckpt)
    trainer = trainer_cls.load(ckpt, corpus=args.data, workers=args.workers, sync=args.sync,
                               run_dir=run_dir)
    check_corpus(trainer.corpus, meta, args.data_changed_ok, ckpt)
    if args.eval_interval is not None:
        trainer.train_cfg = trainer.train_cfg.replace(eval_interval=args.eval_interval)
    return trainer


def steps_to_run(args, trainer) -> int:
    """--steps, or the steps left of the schedule; a finished schedule needs --steps."""
    if args.steps is not None:
        return args.steps
    left = trainer.train_cfg.max_steps - trainer.steps_done
    if left <= 0:
        raise ConfigError(f"the run has finished its schedule (step {trainer.steps_done} of "
                          f"max_steps {trainer.train_cfg.max_steps}); pass --steps N to train N more "
                          "steps at the floor learning rate (min_lr)")
    return left
