"""Model and training configuration: frozen, validated dataclasses and named presets.

    from crystalline.config import ModelConfig, TrainConfig, preset
    model_cfg, train_cfg = preset("tiny")
    model_cfg = model_cfg.replace(n_layer=4)          # validated again
    ModelConfig.from_dict({"n_embd": 64, ...}); load_toml("run.toml"); save_toml(path, m, t)

Every invalid value raises ConfigError naming the field and the fix, when the object is built:
a wrong type, a non-finite float (inf, nan), or a value outside its field's range. Upper
bounds (LIMITS; also the README's "What happens when...") keep every value representable and
every allocation it implies finite; they sit far above anything this trainer can run:

    vocab_size <= 2**31 - 1 (int32 token ids)    block_size, n_embd <= 65,536
    n_layer <= 1,024                             parameters <= 2**31 - 1 (8 GiB per float32 copy)
    batch_size, eval_batches <= 1,048,576        max_steps, warmup_steps, eval_interval <= 10**12
    learning_rate <= 10 (an AdamW step moves a parameter by about the learning rate)
    learning_rate * weight_decay <= 1 (more would flip the sign of every decayed parameter
    each step and grow it without bound)         seed < 2**63
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import tomli_w

from crystalline.errors import ConfigError

# The single switch for Numba's fastmath in every kernel (never used in the tree reduction).
FASTMATH = False

# Arithmetic of the matrix products (see crystalline.model.precision).
PRECISIONS = ("fp32", "bf16")

# A sane upper bound on worker threads in one process (12**3 = one full 4-level lattice).
MAX_WORKERS = 1728

# Upper bounds of the integer fields and of learning_rate (see the module docstring).
MAX_STEPS = 10**12
LIMITS = {"vocab_size": 2**31 - 1, "block_size": 2**16, "n_layer": 1024, "n_embd": 2**16,
          "n_head": 2**16, "batch_size": 2**20, "eval_batches": 2**20, "max_steps": MAX_STEPS,
          "warmup_steps": MAX_STEPS, "eval_interval": MAX_STEPS, "seed": 2**63 - 1,
          "learning_rate": 10.0}
MAX_PARAMETERS = 2**31 - 1
MAX_SAMPLE_TOKENS = 1_000_000   # tokens one `sample` (or train --sample) may generate


class _Config:
    """Shared behaviour: validation on build, replace(), dict and TOML round trips."""

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, self._checked(f))
        self._validate()

    def _checked(self, f):
        """The field's value as its declared type, or a ConfigError naming the field."""
        value, where = getattr(self, f.name), f"{type(self).__name__}.{f.name}"
        if f.type == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string, got {value!r}")
            return value
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}[f.type]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r} is invalid: use a finite number")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        limit = LIMITS.get(f.name)
        if (limit is not None and value > limit) or (kind is float and abs(value) > 1e300):
            shown = repr(value) if len(repr(value)) <= 24 else f"a {len(repr(value))}-digit number"
            raise ConfigError(f"{where} = {shown} is too large: use at most {limit or 1e300:,}")
        return kind(value)

    def _validate(self):
        raise NotImplementedError

    def _require(self, ok: bool, name: str, fix: str):
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{name} = {getattr(self, name)!r} is invalid: {fix}")

    def replace(self, **changes):
        """A copy with some fields changed, validated again."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no field(s) {sorted(unknown)}; "
                              f"known fields: {[f.name for f in fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {known}")
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig(_Config):
    vocab_size: int = 256   # tokens in the vocabulary (256 for the byte tokenizer)
    block_size: int = 128   # T: the longest context the model sees
    n_layer: int = 6        # L: transformer blocks
    n_head: int = 8         # NH: attention heads; n_embd must divide by it
    n_embd: int = 256       # C: channels
    dropout: float = 0.0    # drop probability in training (embeddings, attention, residual branches)

    def _validate(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            self._require(getattr(self, name) > 0, name, "use a positive integer")
        self._require(0 <= self.dropout < 1, "dropout",
                      "use a drop probability 0 <= dropout < 1 (0 turns dropout off)")
        self._require(self.n_embd % self.n_head == 0, "n_embd",
                      f"n_embd must be divisible by n_head = {self.n_head} "
                      f"(e.g. n_embd = {self.n_head * max(1, round(self.n_embd / self.n_head))})")
        self._require(self.num_parameters <= MAX_PARAMETERS, "n_embd",
                      f"this shape has {self.num_parameters:,} parameters; at most {MAX_PARAMETERS:,} "
                      "fit: lower n_embd, n_layer, block_size or vocab_size")

    @property
    def num_parameters(self) -> int:
        """Parameters of a GPT of this shape (tied LM head; layout padding not counted)."""
        V, T, L, C = self.vocab_size, self.block_size, self.n_layer, self.n_embd
        return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


@dataclass(frozen=True)
class TrainConfig(_Config):
    batch_size: int = 16          # sequences per global step, split over all workers
    learning_rate: float = 1e-3   # peak learning rate after warm-up
    min_lr: float = 1e-4          # floor of the cosine decay
    warmup_steps: int = 100       # linear warm-up from 0 to learning_rate
    max_steps: int = 2000         # steps of the cosine schedule (and the default run length)
    weight_decay: float = 0.1     # AdamW decoupled decay on matrices (not biases, LayerNorm)
    grad_clip: float = 1.0        # clip the global gradient norm to this; 0 disables
    beta1: float = 0.9            # AdamW first-moment decay
    beta2: float = 0.95           # AdamW second-moment decay
    eval_interval: int = 100      # steps between validation losses; 0 disables
    eval_batches: int = 8         # batches of batch_size sequences per validation
    seed: int = 0                 # seeds parameters and batch sampling
    precision: str = "fp32"       # "bf16": matmuls on bf16 copies, fp32 accumulation and master weights

    def _validate(self):
        self._require(self.batch_size > 0, "batch_size", "use a positive number of sequences")
        self._require(self.learning_rate > 0, "learning_rate", "use a positive learning rate")
        self._require(0 <= self.min_lr <= self.learning_rate, "min_lr",
                      "use 0 <= min_lr <= learning_rate")
        self._require(self.warmup_steps >= 0, "warmup_steps", "use 0 or more steps")
        self._require(self.max_steps > 0, "max_steps", "use a positive number of steps")
        self._require(self.weight_decay >= 0, "weight_decay", "use 0 or a positive decay")
        self._require(self.learning_rate * self.weight_decay <= 1, "weight_decay",
                      f"learning_rate * weight_decay must be at most 1 (more flips every decayed "
                      f"parameter each step): use weight_decay <= {1 / self.learning_rate:g}")
        self._require(self.grad_clip >= 0, "grad_clip", "use 0 (off) or a positive norm")
        self._require(0 <= self.beta1 < 1, "beta1", "use 0 <= beta1 < 1")
        self._require(0 <= self.beta2 < 1, "beta2", "use 0 <= beta2 < 1")
        self._require(self.eval_interval >= 0, "eval_interval", "use 0 (off) or a positive interval")
        self._require(self.eval_batches > 0, "eval_batches", "use a positive number of batches")
        self._require(0 <= self.seed < 2**63, "seed", "use a non-negative integer below 2**63")
        self._require(self.precision in PRECISIONS, "precision", 'use "fp32" or "bf16"')


PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {
    # Tests and demos: trains visibly in seconds.
    "tiny": (ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32),
             TrainConfig(batch_size=8, learning_rate=3e-3, min_lr=3e-4, warmup_steps=10,
                         max_steps=200, eval_interval=50, eval_batches=4)),
    # A quick real run: a few minutes on two cores.
    "small": (ModelConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
              TrainConfig(batch_size=16, learning_rate=2e-3, min_lr=2e-4, warmup_steps=50,
                          max_steps=1000, eval_interval=100)),
    # The predecessor system's model size: about 4.8M parameters with the byte vocabulary.
    "cllm-4.5m": (ModelConfig(block_size=128, n_layer=6, n_head=8, n_embd=256),
                  TrainConfig(batch_size=16, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                              max_steps=5000, eval_interval=250)),
    # nanoGPT's shakespeare-char recipe (config/train_shakespeare_char.py): about 10.8M
    # parameters with the byte vocabulary, dropout 0.2 against overfitting Tiny Shakespeare.
    "shakespeare-char": (ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
                         TrainConfig(batch_size=64, learning_rate=1e-3, min_lr=1e-4,
                                     warmup_steps=100, max_steps=5000, beta2=0.99,
                                     eval_interval=250, eval_batches=8)),
}


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The (ModelConfig, TrainConfig) pair of a named preset."""
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a name such as \"tiny\", got {name!r}; "
                          f"choose one of {sorted(PRESETS)}")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def schedule_for_run(train_cfg: TrainConfig, steps: int | None = None,
                     max_steps: int | None = None) -> TrainConfig:
    """The config of a new run of `steps` steps: its learning-rate schedule (warm-up, then
    cosine to min_lr at max_steps) spans the run, unless `max_steps` sets it apart. A warm-up
    as long as the schedule (it would never reach the peak) becomes a tenth of it."""
    length = max_steps if max_steps is not None else steps
    if length is None:
        return train_cfg
    cfg = train_cfg.replace(max_steps=length)
    if cfg.warmup_steps >= cfg.max_steps:
        cfg = cfg.replace(warmup_steps=cfg.max_steps // 10)
    return cfg


def load_toml(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read `[model]` and `[train]` tables (each optional; missing fields take defaults).

    A top-level `preset = "name"` starts from that preset instead of the defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a TOML file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"preset", "model", "train"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown table(s) {unknown}; "
                          "use [model], [train] and an optional preset = \"name\"")
    for table in ("model", "train"):
        if not isinstance(doc.get(table, {}), dict):
            raise ConfigError(f"config file {path}: `{table}` must be a [{table}] table of fields")
    try:
        model_cfg, train_cfg = preset(doc["preset"]) if "preset" in doc else (ModelConfig(), TrainConfig())
        model_cfg = model_cfg.replace(**doc.get("model", {}))
        train_cfg = train_cfg.replace(**doc.get("train", {}))
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return model_cfg, train_cfg


def save_toml(path: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    from crystalline.io import atomic_write_text
    atomic_write_text(path, tomli_w.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}))
