"""The memory a training configuration needs, computed before anything is allocated.

    need = design_bytes(model_cfg, batch_size, hierarchy)   # {component: bytes}
    check_fits(model_cfg, batch_size, hierarchy)            # ConfigError if it cannot fit

The components are the design's buffers (the same ones benchmarks/scaling.py measures on a
live tree): parameters and their decay mask, AdamW's two moments, one gradient row and one
activation workspace per worker that has sequences, each worker's input and target tokens,
and the per-step batch offsets. Sizes are Python integers, so a huge configuration is
refused rather than overflowing.
"""

from __future__ import annotations

from crystalline.engine.reduce import split_by_group
from crystalline.errors import ConfigError
from crystalline.model.layout import ALIGN, activation_shapes, parameter_shapes

FLOAT = 4                 # bytes of a float32 or an int32
HEADROOM = 0.9            # use at most this share of the available memory


def _aligned_floats(shapes) -> int:
    """Floats of make_layout(shapes), in exact integers."""
    offset = 0
    for _, shape in shapes:
        offset = -(-offset // ALIGN) * ALIGN
        size = 1
        for s in shape:
            size *= int(s)
        offset += size
    return -(-offset // ALIGN) * ALIGN


def design_bytes(model_cfg, batch_size: int, hierarchy, sequences: int | None = None) -> dict[str, int]:
    """Bytes by component for training `model_cfg` at `batch_size` on `hierarchy`.

    sequences: how many of each global batch this process computes (default: all of it).
    """
    count = batch_size if sequences is None else sequences
    T = model_cfg.block_size
    P = _aligned_floats(parameter_shapes(model_cfg))
    _, counts = split_by_group(int(count), [s.group for s in hierarchy.workers])
    active = [int(c) for c in counts if c]
    return {
        "parameters": 2 * P * FLOAT,                 # params and the decay mask
        "adamw": 2 * P * FLOAT,                      # m and v
        "gradients": len(active) * P * FLOAT,        # one row per worker with sequences
        "activations": sum(_aligned_floats(activation_shapes(model_cfg, c, T)) for c in active) * FLOAT,
        "batches": sum(2 * c * T * FLOAT for c in active) + 2 * 8 * int(batch_size),
    }


def available_bytes() -> int:
    import psutil
    return int(psutil.virtual_memory().available)


def check_fits(model_cfg, batch_size: int, hierarchy, sequences: int | None = None,
               available: int | None = None) -> int:
    """The design's total bytes; ConfigError naming the figure and what to lower if it exceeds
    HEADROOM of the machine's available memory."""
    need = design_bytes(model_cfg, batch_size, hierarchy, sequences)
    total = sum(need.values())
    available = available_bytes() if available is None else available
    if total > HEADROOM * available:
        biggest = max(need, key=need.get)
        lower = {"activations": "--batch-size (or block_size / n_layer / n_embd)",
                 "batches": "--batch-size", "gradients": "--workers (or the model size)",
                 "parameters": "the model size (n_layer, n_embd, vocabulary)",
                 "adamw": "the model size (n_layer, n_embd, vocabulary)"}[biggest]
        parts = ", ".join(f"{k} {v / 2**30:,.2f}" for k, v in need.items())
        raise ConfigError(f"this configuration needs about {total / 2**30:,.2f} GiB ({parts} GiB) but "
                          f"only {available / 2**30:,.2f} GiB of memory is available; lower {lower}")
    return total
