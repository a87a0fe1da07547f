"""Checkpoints: one safetensors file (parameters and AdamW moments) with JSON metadata.

    save_checkpoint(path, trainer)          # atomic: temp file, fsync, rename
    trainer = load_trainer(Trainer, path)   # exact resume
    model, tokenizer, meta = load_model(path)    # for sampling

Nothing is ever unpickled. The metadata carries a SHA-256 digest over the tensors and the rest
of the metadata, so a truncated, tampered or mismatched file is refused with a clear error and
a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from crystalline.config import ModelConfig, TrainConfig
from crystalline.errors import CheckpointError, ConfigError, DataError

FORMAT = "crystalline-checkpoint"
VERSION = 1
TENSORS = ("params", "adam_m", "adam_v")
META_KEYS = {"format", "version", "model_config", "train_config", "tokenizer", "step", "adam_t",
             "skipped_steps", "data_source", "workers", "sync", "digest"}


def _digest(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    for name in TENSORS:
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def save_checkpoint(path, trainer) -> Path:
    """Write `trainer`'s state to `path` (conventionally *.safetensors); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"params": trainer.model.params, "adam_m": trainer.optimizer.m,
               "adam_v": trainer.optimizer.v}
    meta = {"format": FORMAT, "version": VERSION,
            "model_config": trainer.model_cfg.to_dict(), "train_config": trainer.train_cfg.to_dict(),
            "tokenizer": trainer.corpus.tokenizer.to_dict(), "step": trainer.steps_done,
            "adam_t": trainer.optimizer.t, "skipped_steps": trainer.skipped_steps,
            "data_source": str(trainer.corpus.source), "workers": trainer.workers, "sync": trainer.sync}
    meta["digest"] = _digest(tensors, meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"crystalline": json.dumps(meta)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and verified metadata of a checkpoint file, or a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors "
                              "file written by crystalline (e.g. runs/NAME/checkpoint.safetensors)")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; crystalline never unpickles "
                              "files. Use a checkpoint written by crystalline (safetensors)")
    if len(head) < 9 or head[8:9] != b"{":
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or set(meta) != META_KEYS:
        raise CheckpointError(f"{path}: metadata is not a crystalline checkpoint's (fields differ)")
    if meta["version"] != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['version']!r}; this crystalline "
                              f"reads version {VERSION}")
    if set(tensors) != set(TENSORS) or any(t.dtype != np.float32 or t.ndim != 1 for t in tensors.values()):
        raise CheckpointError(f"{path}: expected float32 vectors {list(TENSORS)}, found "
                              f"{ {k: (str(v.dtype), v.shape) for k, v in tensors.items()} }")
    if _digest(tensors, meta) != meta["digest"]:
        raise CheckpointError(f"{path}: digest mismatch: the file was modified or corrupted after it "
                              "was written; use an earlier checkpoint")
    return tensors, meta


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
    trainer.optimizer.m[:] = tensors["adam_m"]
    trainer.optimizer.v[:] = tensors["adam_v"]
    trainer.optimizer.t = int(meta["adam_t"])
    trainer.steps_done = int(meta["step"])
    trainer.skipped_steps = int(meta["skipped_steps"])
    trainer.stats.step = trainer.steps_done
    return trainer
