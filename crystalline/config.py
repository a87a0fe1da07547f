"""Model and training configuration: frozen, validated dataclasses and named presets.

    from crystalline.config import ModelConfig, TrainConfig, preset
    model_cfg, train_cfg = preset("tiny")
    model_cfg = model_cfg.replace(n_layer=4)          # validated again
    ModelConfig.from_dict({"n_embd": 64, ...}); load_toml("run.toml"); save_toml(path, m, t)

Every invalid value raises ConfigError naming the field and the fix, when the object is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import tomli_w

from crystalline.errors import ConfigError

# The single switch for Numba's fastmath in every kernel (never used in the tree reduction).
FASTMATH = False

# A sane upper bound on worker threads in one process (12**3 = one full 4-level lattice).
MAX_WORKERS = 1728



class _Config:
    """Shared behaviour: validation on build, replace(), dict and TOML round trips."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}[f.type]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be a number, got {value!r}")
            if kind is int and not float(value).is_integer():
                raise ConfigError(f"{type(self).__name__}.{f.name} must be an integer, got {value!r}")
            object.__setattr__(self, f.name, kind(value))
        self._validate()

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

    def _validate(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            self._require(getattr(self, name) > 0, name, "use a positive integer")
        self._require(self.vocab_size <= 2**31 - 1, "vocab_size", "use at most 2**31 - 1 tokens")
        self._require(self.n_embd % self.n_head == 0, "n_embd",
                      f"n_embd must be divisible by n_head = {self.n_head} "
                      f"(e.g. n_embd = {self.n_head * max(1, round(self.n_embd / self.n_head))})")


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

    def _validate(self):
        self._require(self.batch_size > 0, "batch_size", "use a positive number of sequences")
        self._require(self.learning_rate > 0, "learning_rate", "use a positive learning rate")
        self._require(0 <= self.min_lr <= self.learning_rate, "min_lr",
                      "use 0 <= min_lr <= learning_rate")
        self._require(self.warmup_steps >= 0, "warmup_steps", "use 0 or more steps")
        self._require(self.max_steps > 0, "max_steps", "use a positive number of steps")
        self._require(self.weight_decay >= 0, "weight_decay", "use 0 or a positive decay")
        self._require(self.grad_clip >= 0, "grad_clip", "use 0 (off) or a positive norm")
        self._require(0 <= self.beta1 < 1, "beta1", "use 0 <= beta1 < 1")
        self._require(0 <= self.beta2 < 1, "beta2", "use 0 <= beta2 < 1")
        self._require(self.eval_interval >= 0, "eval_interval", "use 0 (off) or a positive interval")
        self._require(self.eval_batches > 0, "eval_batches", "use a positive number of batches")
        self._require(0 <= self.seed < 2**63, "seed", "use a non-negative integer below 2**63")


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
}


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The (ModelConfig, TrainConfig) pair of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


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
