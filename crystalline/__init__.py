"""crystalline: a hierarchical, barrier-synchronised, data-parallel thread trainer for small GPTs.

    from crystalline import GPT, ModelConfig, TrainConfig, Hierarchy, Trainer, preset

Names are imported on first use, so `import crystalline` (and the CLI) start fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "crystalline.config",
    "TrainConfig": "crystalline.config",
    "ConfigError": "crystalline.errors",
    "preset": "crystalline.config",
    "GPT": "crystalline.model.gpt",
    "Hierarchy": "crystalline.engine.hierarchy",
    "Trainer": "crystalline.engine.trainer",
    "compare_runs": "crystalline.compare",
    "plot_runs": "crystalline.compare",
    "open_run": "crystalline.runs",
    "RunError": "crystalline.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crystalline' has no attribute {name!r}")
