"""Checkpoints: one safetensors file (parameters and AdamW moments) with JSON metadata.

    save_checkpoint(path, trainer)          # atomic (crystalline.io); WriteError if it cannot
    trainer = load_trainer(Trainer, path)   # exact resume
    model, tokenizer, meta = load_model(path)    # for sampling

Nothing is ever unpickled. The metadata carries a SHA-256 digest over the tensors and the rest
of the metadata, so a truncated, tampered or mismatched file is refused with a clear error and
a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from crystalline.config import ModelConfig, TrainConfig
from crystalline.errors import CheckpointError, ConfigError, DataError, WriteError
from crystalline.io import atomic_path

FORMAT = "crystalline-checkpoint"
VERSION = 1
TENSORS = ("params", "adam_m", "adam_v")
META_KEYS = {"format", "version", "model_config", "train_config", "tokenizer", "step", "adam_t",
             "skipped_steps", "data_source", "data_sha256", "workers", "sync", "digest"}
LEGACY_META_KEYS = META_KEYS - {"data_sha256"}     # written before the corpus hash was recorded


def _digest(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    for name in TENSORS:
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def save_checkpoint(path, trainer) -> Path:
    """Write `trainer`'s state to `path` (conventionally *.safetensors); returns the path."""
    path = Path(path)
    tensors = {"params": trainer.model.params, "adam_m": trainer.optimizer.m,
               "adam_v": trainer.optimizer.v}
    meta = {"format": FORMAT, "version": VERSION,
            "model_config": trainer.model_cfg.to_dict(), "train_config": trainer.train_cfg.to_dict(),
            "tokenizer": trainer.corpus.tokenizer.to_dict(), "step": trainer.steps_done,
            "adam_t": trainer.optimizer.t, "skipped_steps": trainer.skipped_steps,
            "data_source": str(trainer.corpus.source), "data_sha256": trainer.corpus.sha256,
            "workers": trainer.workers, "sync": trainer.sync}
    meta["digest"] = _digest(tensors, meta)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"crystalline": json.dumps(meta)})
        except SafetensorError as e:          # the library's own wrapper of an OSError
            raise WriteError(errno.EIO, f"cannot write checkpoint {path}: {e}; free some space or "
                             f"write elsewhere (any previous {path.name} is intact)") from None
    return path


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and verified metadata of a checkpoint file, or a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.safetensors"
        hint = f"pass {inside}" if inside.is_file() else "pass the path of a .safetensors file in it"
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors "
                              "file written by crystalline (e.g. runs/NAME/checkpoint.safetensors)")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length (its first byte may be 0x80), then "{"
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if not safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; crystalline never unpickles "
                              "files. Use a checkpoint written by crystalline (safetensors)")
    if not safetensors:
        raise CheckpointError(f"{path} is not a safetensors file (bad header); it may be truncated or "
                              "of another format")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get("crystalline")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:   # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(f"{path} cannot be read as a safetensors checkpoint ({e}); it may be "
                              "truncated: use an earlier checkpoint") from None
    if raw is None:
        raise CheckpointError(f"{path} has no crystalline metadata; it was not written by crystalline")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or set(meta) not in (META_KEYS, LEGACY_META_KEYS):
        raise CheckpointError(f"{path}: metadata is not a crystalline checkpoint's (fields differ)")
    if meta["version"] != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['version']!r}; this crystalline "
                              f"reads version {VERSION}")
    _check_metadata_fields(path, meta)
    if set(tensors) != set(TENSORS) or any(t.dtype != np.float32 or t.ndim != 1 for t in tensors.values()):
        raise CheckpointError(f"{path}: expected float32 vectors {list(TENSORS)}, found "
                              f"{ {k: (str(v.dtype), v.shape) for k, v in tensors.items()} }")
    if _digest(tensors, meta) != meta["digest"]:
        raise CheckpointError(f"{path}: digest mismatch: the file was modified or corrupted after it "
                              "was written; use an earlier checkpoint")
    bad = {k: int(np.count_nonzero(~np.isfinite(tensors[k]))) for k in TENSORS}
    if any(bad.values()):
        raise CheckpointError(f"{path}: non-finite values {bad}; crystalline never saves them (a step "
                              "that would make one is skipped): use a checkpoint written by crystalline")
    return tensors, meta


def _check_metadata_fields(path, meta: dict) -> None:
    """Each metadata field has its type and range, or a CheckpointError names the field."""
    from crystalline.config import MAX_STEPS, MAX_WORKERS

    def count(value, high):
        return type(value) is int and 0 <= value <= high

    def sha256(value):
        return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)

    checks = {
        "model_config": (lambda v: isinstance(v, dict), "a table of ModelConfig fields"),
        "train_config": (lambda v: isinstance(v, dict), "a table of TrainConfig fields"),
        "tokenizer": (lambda v: isinstance(v, dict), "a tokenizer description"),
        "step": (lambda v: count(v, MAX_STEPS), f"an integer from 0 to {MAX_STEPS:,}"),
        "adam_t": (lambda v: count(v, meta["step"]), "an integer from 0 to the step"),
        "skipped_steps": (lambda v: count(v, meta["step"]), "an integer from 0 to the step"),
        "data_source": (lambda v: isinstance(v, str), "a path (a string)"),
        "data_sha256": (sha256, "a SHA-256 hex digest"),
        "workers": (lambda v: count(v, MAX_WORKERS) and v > 0, f"an integer from 1 to {MAX_WORKERS}"),
        "sync": (lambda v: v in ("lock_free", "model_lock"), '"lock_free" or "model_lock"'),
        "digest": (sha256, "a SHA-256 hex digest"),
    }
    for name, (ok, expected) in checks.items():
        if name in meta and not ok(meta[name]):
            raise CheckpointError(f"{path}: metadata field {name} = {meta[name]!r:.80} is invalid "
                                  f"(expected {expected}); the file is damaged: use an earlier checkpoint")


def _configs(path, meta) -> tuple[ModelConfig, TrainConfig]:
    try:
        return ModelConfig.from_dict(meta["model_config"]), TrainConfig.from_dict(meta["train_config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid config in metadata: {e}") from None


def _check_size(path, tensors, num_parameters: int) -> None:
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    if any(n != num_parameters for n in sizes.values()):
        raise CheckpointError(f"{path}: tensor sizes {sizes} do not match the {num_parameters:,} "
                              "parameters its model config needs")


def load_model(path):
    """(GPT with the checkpoint's parameters, tokenizer, metadata) for sampling or evaluation."""
    from crystalline.data.tokenizers import load_tokenizer
    from crystalline.model.gpt import GPT
    tensors, meta = read_checkpoint(path)
    model_cfg, _ = _configs(path, meta)
    model = GPT(model_cfg, seed=0)
    _check_size(path, tensors, model.num_parameters)
    model.params[:] = tensors["params"]
    try:
        tokenizer = load_tokenizer(meta["tokenizer"])
    except DataError as e:
        raise CheckpointError(f"{path}: invalid tokenizer in metadata: {e}") from None
    return model, tokenizer, meta


def load_trainer(cls, path, corpus=None, workers=None, sync="lock_free", cache_dir=None, run_dir=None):
    """A Trainer restored from `path`, on `corpus` (default: the checkpoint's data source)."""
    from crystalline.data.tokenizers import load_tokenizer
    tensors, meta = read_checkpoint(path)
    model_cfg, train_cfg = _configs(path, meta)
    tokenizer = load_tokenizer(meta["tokenizer"])
    if corpus is None:
        corpus = meta["data_source"]
        if not corpus.startswith("squad:") and not Path(corpus).exists():
            raise DataError(f"the checkpoint's corpus {corpus} is not on this machine; pass corpus=PATH "
                            "(the same text) to Trainer.load or --data to the CLI")
    trainer = cls(model_cfg, train_cfg, corpus, workers=workers or meta["workers"], sync=sync,
                  cache_dir=cache_dir, tokenizer=tokenizer, run_dir=run_dir)
    _check_size(path, tensors, trainer.model.num_parameters)
    trainer.model.params[:] = tensors["params"]
    trainer.model.weights_changed()
    trainer.optimizer.m[:] = tensors["adam_m"]
    trainer.optimizer.v[:] = tensors["adam_v"]
    trainer.optimizer.t = int(meta["adam_t"])
    trainer.steps_done = int(meta["step"])
    trainer.skipped_steps = int(meta["skipped_steps"])
    trainer.stats.step = trainer.steps_done
    return trainer
