"""Compare finished (or running) run folders: what differs in their configs, how they ended.

    from crystalline import compare_runs
    table = compare_runs("runs/lr-*")            # or a list of run folders
    fig = plot_runs("runs/lr-*")                 # loss, val loss, tokens/s against step

A run folder is what `crystalline train` writes: config.toml, metrics.jsonl and, once saved,
checkpoint.safetensors (whose metadata adds workers, sync, tokenizer and corpus; only its JSON
header is read). The table has one row per run: its name, every setting whose value differs
between the runs, and the figures steps, final_loss, best_loss, final_val_loss, best_val_loss,
tokens_per_s (median over steps) and seconds (wall time to the last step). A pandas DataFrame
when pandas is installed, else a list of dicts.
"""

from __future__ import annotations

import glob
import json
import math
import tomllib
from pathlib import Path

from crystalline.errors import DataError

FIGURES = ("steps", "final_loss", "best_loss", "final_val_loss", "best_val_loss", "tokens_per_s",
           "seconds")
CURVES = (("loss", "training loss"), ("val_loss", "validation loss"), ("tokens_per_s", "tokens / s"))


def run_folders(runs) -> list[Path]:
    """Run folders from a folder, a glob pattern, or a list of either (sorted glob matches)."""
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    folders = []
    for item in items:
        text = str(item)
        pattern = glob.has_magic(text)
        for match in sorted(glob.glob(text)) if pattern else [text]:
            if Path(match, "metrics.jsonl").is_file():
                folders.append(Path(match))
            elif not pattern:      # a glob may match other files; a folder named outright must be a run
                raise DataError(f"{text} is not a run folder (no metrics.jsonl); pass folders written "
                                "by crystalline train, e.g. runs/NAME or a glob like 'runs/lr-*'")
    if not folders:
        raise DataError(f"no run folders found in {runs!r}; pass folders written by crystalline train")
    return folders


def read_run(folder) -> dict:
    """{"name", "path", "settings": flat dict of configuration, "metrics": list of records}."""
    folder = Path(folder)
    settings = {}
    if (folder / "config.toml").is_file():
        doc = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
        for table, fields in doc.items():
            settings.update({f"{table}.{k}": v for k, v in fields.items()})
    settings.update(_checkpoint_settings(folder / "checkpoint.safetensors"))
    metrics = []
    with open(folder / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    metrics.append(json.loads(line))
                except ValueError:
                    break          # a line cut by a kill: the records before it stand
    return {"name": folder.name, "path": str(folder), "settings": settings, "metrics": metrics}


def _checkpoint_settings(path: Path) -> dict:
    if not path.is_file():
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("crystalline", "{}"))
    except Exception:   # noqa: BLE001 - a damaged checkpoint adds nothing to a comparison
        return {}
    tokenizer = meta.get("tokenizer", {})
    return {"workers": meta.get("workers"), "sync": meta.get("sync"),
            "tokenizer": tokenizer.get("kind") if isinstance(tokenizer, dict) else None,
            "data": meta.get("data_source")}


def _figures(metrics: list[dict]) -> dict:
    def column(key):
        return [float(r[key]) for r in metrics if r.get(key) is not None]

    loss, val, speed = column("loss"), column("val_loss"), column("tokens_per_s")
    finite = [x for x in loss if math.isfinite(x)]
    return {"steps": len(metrics),
            "final_loss": loss[-1] if loss else math.nan,
            "best_loss": min(finite) if finite else math.nan,
            "final_val_loss": val[-1] if val else math.nan,
            "best_val_loss": min(val) if val else math.nan,
            "tokens_per_s": sorted(speed)[len(speed) // 2] if speed else math.nan,
            "seconds": float(metrics[-1].get("time", math.nan)) if metrics else math.nan}


def compare_runs(runs, as_dataframe: bool | None = None):
    """One row per run: name, the settings that differ between runs, and FIGURES (see the module
    docstring). as_dataframe: None gives a DataFrame when pandas is installed."""
    read = [read_run(folder) for folder in run_folders(runs)]
    keys = sorted({k for r in read for k in r["settings"]})
    differing = [k for k in keys if len({json.dumps(r["settings"].get(k)) for r in read}) > 1]
    rows = [{"run": r["name"], **{k: r["settings"].get(k) for k in differing}, **_figures(r["metrics"])}
            for r in read]
    if as_dataframe is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_dataframe:
            raise DataError("as_dataframe=True needs pandas: pip install pandas") from None
        return rows
    return pd.DataFrame(rows).set_index("run")


def plot_runs(runs, curves=CURVES, figsize=None):
    """A matplotlib Figure: one panel per curve (default loss, validation loss, tokens/s against
    step), every run on the same axes in its own colour."""
    import matplotlib.pyplot as plt
    read = [read_run(folder) for folder in run_folders(runs)]
    fig, axes = plt.subplots(1, len(curves), figsize=figsize or (4.2 * len(curves), 3.4),
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], curves):
        for r in read:
            points = [(rec["step"], rec[key]) for rec in r["metrics"] if rec.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, lw=1.2, marker="o" if len(points) < 12 else None,
                        ms=3, label=r["name"])
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
