"""The fixed configurations the figures are made from: QUICK (tests, under two minutes on two
cores) and FULL (the committed figures, cllm-4.5m sizes for throughput and memory, about ten
minutes on two cores). Both are recorded in every figure's config JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class FigureConfig:
    mode: str                          # "quick" | "full"
    seed: int = 0                      # seeds parameters and batch sampling of every run
    # Figure 3, the invariance: one run on each worker count, same preset, batch, seed, steps.
    loss_preset: str = "tiny"
    loss_batch: int = 126              # sequences per global step: 2 per worker at 63 workers
    loss_steps: int = 200
    loss_workers: tuple = (1, 12, 63)
    # Figures 4, 5, 7: one fresh subprocess per (workers, sync), so peak RSS is its own.
    scaling_preset: str = "cllm-4.5m"
    scaling_batch: int = 144           # every one of up to 144 workers gets a sequence
    scaling_steps: int = 3             # timed steps after an untimed first one; fastest drawn
    scaling_workers: tuple = (1, 2, 4, 12, 63, 144)
    sync_workers: tuple = (2, 4)       # lock_free against model_lock at these worker counts
    # Figures 6, 8: one run on 63 workers; stats deltas after a first, untimed step.
    split_preset: str = "small"
    split_batch: int = 126
    split_steps: int = 30
    split_workers: int = 63
    # The stragglers figure: worker 0 slowed by each factor, static against dynamic, alternated.
    straggler_preset: str = "cllm-4.5m"
    straggler_batch: int = 64
    straggler_workers: int = 2
    straggler_factors: tuple = (1.0, 1.5, 2.0, 4.0)
    straggler_rounds: int = 3
    straggler_mode: str = "sleep"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


FULL = FigureConfig(mode="full")

QUICK = FigureConfig(mode="quick", loss_steps=40, scaling_preset="tiny", scaling_steps=3,
                     split_preset="tiny", split_steps=20, straggler_preset="small",
                     straggler_batch=32, straggler_factors=(1.0, 2.0, 4.0))

# The notebook's small-run switch (CRYSTALLINE_SMALL_RUN=1): seconds, in one process.
SMALL = FigureConfig(mode="small", loss_steps=10, scaling_preset="tiny", scaling_batch=48,
                     scaling_steps=2, scaling_workers=(1, 2, 4, 12), split_preset="tiny",
                     split_batch=48, split_steps=8, split_workers=12, straggler_preset="tiny",
                     straggler_batch=32, straggler_factors=(1.0, 2.0, 4.0), straggler_rounds=2)

CONFIGS = {c.mode: c for c in (QUICK, FULL, SMALL)}
