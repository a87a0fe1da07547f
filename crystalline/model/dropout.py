"""Which dropout masks a training forward draws, and applying one site's mask to (N, C) rows.

    key = DropoutKey(seed=train_cfg.seed, step=step, first=first_sequence)
    loss = model.forward_into(ws, x, y, dropout=key)   # masks of sequences first, first + 1, ...
    model.backward_into(ws, grad_row)                  # regenerates the same masks

A mask is a pure function of (seed, step, sequence index in the global batch, layer, site,
position) (kernels/dropout_rng.py), so every sphere tree, worker order and the backward draw the
same masks. No key (evaluation, sampling, the kv cache) or ModelConfig.dropout = 0: no dropout,
and no kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from crystalline.errors import ConfigError
from crystalline.model.kernels.dropout import dropout_forward


@dataclass(frozen=True)
class DropoutKey:
    seed: int    # the run's seed (TrainConfig.seed): a resumed run continues the same masks
    step: int    # the training step
    first: int   # index in the step's global batch of the batch's first sequence

    def __post_init__(self):
        for name in ("seed", "step", "first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not hasattr(value, "__index__") or not 0 <= value < 2**63:
                raise ConfigError(f"DropoutKey.{name} = {value!r} is invalid: use an integer "
                                  "0 <= value < 2**63")
            object.__setattr__(self, name, int(value))


def attention_dropout(key: DropoutKey | None, p: float) -> tuple:
    """(p, seed, step, first sequence): the attention kernel's dropout arguments (before the
    layer); (0.0, 0, 0, 0), no mask, without a key."""
    return (0.0, 0, 0, 0) if key is None else (p, key.seed, key.step, key.first)


def drop_rows(out, inp, key: DropoutKey, p: float, layer: int, site: int, B: int) -> None:
    """out = inp * mask / (1 - p) for B sequences of (T, C) rows (out may be inp); the mask of
    sequence key.first + b of that (layer, site). Also the backward of the same dropout."""
    dropout_forward(out.reshape(-1), inp.reshape(-1), key.seed, key.step, key.first, layer, site,
                    B, inp.size // B, p)
