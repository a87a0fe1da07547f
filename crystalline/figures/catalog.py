"""What each figure is: the data table it draws (built from measurements) and how it draws it.

A figure's table is the CSV written beside it; `draw(table, provenance)` is the only way a
figure is drawn, both right after measuring and with --from-data, so a redraw from saved data
is the same picture. Deterministic figures depend on no timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from crystalline.errors import DataError
from crystalline.figures.stragglers import draw_stragglers, stragglers_table

GROUPS = 12


@dataclass(frozen=True)
class FigureSpec:
    name: str
    description: str
    deterministic: bool                  # same bytes every time it is made on this machine
    needs: str | None                    # measurement it is made from: loss | scaling | split |
                                         # stragglers
    table: Callable                      # (measurements, cfg) -> {column: list}
    draw: Callable                       # (table, provenance dict) -> Figure
    parameters: Callable = lambda cfg: {}   # the config fields this figure depends on


def _columns(table: dict, name: str, *columns: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing or not table[columns[0]]:
        raise DataError(f"data of figure {name!r} lacks column(s) {missing or 'rows'}; "
                        "regenerate it (crystalline figures without --from-data)")


def _block_size(preset_name: str) -> int:
    from crystalline.config import preset
    return preset(preset_name)[0].block_size


# ---------------------------------------------------------------- 1. hierarchy
def _hierarchy_table(workers: int) -> dict:
    from crystalline.engine.hierarchy import Hierarchy
    from crystalline.viz.graph import radial_layout
    h = Hierarchy.for_workers(workers)
    pos = radial_layout(h)
    return {"sphere_id": [s.id for s in h], "parent": [-1 if s.parent is None else s.parent.id
                                                       for s in h],
            "role": ["node_zero" if s.is_node_zero else s.role for s in h],
            "level": [s.level for s in h], "position": [s.position for s in h],
            "group": [s.group for s in h], "worker_index": [s.worker_index for s in h],
            "x": [pos[s.id][0] for s in h], "y": [pos[s.id][1] for s in h]}


def hierarchy_from_table(table: dict):
    """Rebuild the Hierarchy a hierarchy table describes (parents, positions, worker order)."""
    from crystalline.engine.hierarchy import Hierarchy, Sphere
    _columns(table, "hierarchy", "sphere_id", "parent", "role", "position", "worker_index")
    spheres: list = []
    for i, parent, role, position, worker_index in zip(
            table["sphere_id"], table["parent"], table["role"], table["position"],
            table["worker_index"]):
        if i != len(spheres) or not -1 <= parent < i:
            raise DataError(f"hierarchy data row {i} is out of breadth-first order; "
                            "regenerate it (crystalline figures without --from-data)")
        s = Sphere("worker" if role == "worker" else "control",
                   None if parent < 0 else spheres[parent], position)
        s.worker_index = worker_index
        if parent >= 0:
            spheres[parent].children.append(s)
        spheres.append(s)
    return Hierarchy(spheres[0])


def _draw_hierarchy(table, provenance):
    from crystalline.viz.graph import draw_hierarchy
    return draw_hierarchy(hierarchy_from_table(table))


# ---------------------------------------------------------------- 2. kissing
def _kissing_table(measurements, cfg) -> dict:
    from crystalline.viz.geometry import kissing_centres
    centres = np.vstack([np.zeros((1, 3)), kissing_centres(1.0)])
    return {"sphere": ["node_zero"] + [f"group_{g}" for g in range(GROUPS)],
            "group": list(range(-1, GROUPS)), "x": centres[:, 0].tolist(),
            "y": centres[:, 1].tolist(), "z": centres[:, 2].tolist(), "radius": [1.0] * 13}


def _draw_kissing(table, provenance):
    from crystalline.viz.geometry import draw_kissing, kissing_centres
    _columns(table, "kissing", "x", "y", "z", "radius")
    centres = np.column_stack([table["x"], table["y"], table["z"]])
    expected = np.vstack([np.zeros((1, 3)), kissing_centres(1.0)])
    if centres.shape != expected.shape or not np.allclose(centres, expected) \
            or not np.allclose(table["radius"], 1.0):
        raise DataError("kissing data does not hold the 13 unit spheres of the cuboctahedron "
                        "that draw_kissing draws; regenerate it (crystalline figures)")
    fig = draw_kissing()
    for collection in fig.axes[0].collections:     # thousands of facets: raster in the SVG
        collection.set_rasterized(True)
    return fig


# ---------------------------------------------------------------- 3. loss invariance
def _loss_table(measurements, cfg) -> dict:
    losses = measurements["loss"]
    workers = list(losses)
    table = {"step": list(range(cfg.loss_steps))}
    table.update({f"loss_{w}": [float(v) for v in losses[w]] for w in workers})
    reference = np.asarray(losses[workers[0]])
    table.update({f"absdiff_{w}": np.abs(np.asarray(losses[w]) - reference).tolist()
                  for w in workers[1:]})
    return table


def _draw_loss(table, provenance):
    from crystalline.viz.plots import plot_loss_curves
    p = provenance["parameters"]
    _columns(table, "loss_invariance", "step", *(f"loss_{w}" for w in p["loss_workers"]))
    title = (f"Same run on {', '.join(map(str, p['loss_workers']))} workers: {p['loss_preset']} "
             f"preset, batch {p['loss_batch']}, seed {p['seed']}")
    return plot_loss_curves(table["step"], {w: table[f"loss_{w}"] for w in p["loss_workers"]},
                            title=title)


# ---------------------------------------------------------------- 4, 5, 7. scaling
def scaling_configs(cfg, names) -> list[tuple[int, str]]:
    """(workers, sync) pairs the chosen figures need, each once, in a fixed order."""
    wanted = []
    if "throughput" in names or "memory" in names:
        wanted += [(w, "lock_free") for w in cfg.scaling_workers]
    if "sync_modes" in names:
        wanted += [(w, s) for w in cfg.sync_workers for s in ("lock_free", "model_lock")]
    return list(dict.fromkeys(wanted))


def _run(measurements, workers, sync) -> dict:
    return next(r for r in measurements["scaling"] if r["workers"] == workers and r["sync"] == sync)


def _scaling_title(what: str, p: dict, cores: int | None = None) -> str:
    where = f", {cores} cores" if cores else ""
    return (f"{what}\n{p['scaling_preset']} preset, batch {p['scaling_batch']} x "
            f"{_block_size(p['scaling_preset'])} tokens{where}")


def _throughput_table(measurements, cfg) -> dict:
    import os
    cores = os.cpu_count() or 1
    runs = [_run(measurements, w, "lock_free") for w in cfg.scaling_workers]
    one = _run(measurements, 1, "lock_free")["tokens_per_s"] if 1 in cfg.scaling_workers \
        else float("nan")
    return {"workers": [r["workers"] for r in runs], "spheres": [r["spheres"] for r in runs],
            "tokens_per_s": [r["tokens_per_s"] for r in runs],
            "median_tokens_per_s": [r["tokens_per_s_median"] for r in runs],
            "ideal_tokens_per_s": [one * min(r["workers"], cores) for r in runs],
            "cores": [cores] * len(runs), "other_cpu_share": [r["other_cpu_share"] for r in runs]}


def _draw_throughput(table, provenance):
    from crystalline.viz.plots import plot_throughput
    _columns(table, "throughput", "workers", "tokens_per_s", "median_tokens_per_s",
             "ideal_tokens_per_s", "cores", "other_cpu_share")
    cores = table["cores"][0]
    return plot_throughput(table["workers"], table["tokens_per_s"], table["ideal_tokens_per_s"],
                           cores, _scaling_title("Throughput against worker count",
                                                 provenance["parameters"], cores),
                           median=table["median_tokens_per_s"], others=table["other_cpu_share"])


def _sync_table(measurements, cfg) -> dict:
    import os
    n = len(cfg.sync_workers)
    return {"workers": list(cfg.sync_workers), "cores": [os.cpu_count() or 1] * n,
            "lock_free_tokens_per_s": [_run(measurements, w, "lock_free")["tokens_per_s"]
                                       for w in cfg.sync_workers],
            "model_lock_tokens_per_s": [_run(measurements, w, "model_lock")["tokens_per_s"]
                                        for w in cfg.sync_workers],
            "other_cpu_share": [max(_run(measurements, w, s)["other_cpu_share"]
                                 for s in ("lock_free", "model_lock")) for w in cfg.sync_workers]}


def _draw_sync(table, provenance):
    from crystalline.viz.plots import plot_sync_modes
    _columns(table, "sync_modes", "workers", "lock_free_tokens_per_s",
             "model_lock_tokens_per_s", "cores", "other_cpu_share")
    return plot_sync_modes(table["workers"], table["lock_free_tokens_per_s"],
                           table["model_lock_tokens_per_s"],
                           _scaling_title("Lock-free spheres against one global model lock",
                                          provenance["parameters"]),
                           others=table["other_cpu_share"])


MEMORY_COLUMNS = ("baseline_rss_bytes", "params_bytes", "adamw_bytes", "grads_bytes",
                  "workspaces_bytes", "batches_bytes")


def _memory_table(measurements, cfg) -> dict:
    runs = [_run(measurements, w, "lock_free") for w in cfg.scaling_workers]
    table = {"workers": [r["workers"] for r in runs],
             "peak_rss_bytes": [r["peak_rss_bytes"] for r in runs]}
    table.update({c: [r[c] for r in runs] for c in MEMORY_COLUMNS})
    table["design_bytes"] = [sum(r[c] for c in MEMORY_COLUMNS[1:]) for r in runs]
    return table


def _draw_memory(table, provenance):
    from crystalline.viz.plots import plot_memory
    _columns(table, "memory", "workers", "peak_rss_bytes", *MEMORY_COLUMNS)
    return plot_memory(table["workers"], table["peak_rss_bytes"],
                       {c: table[c] for c in MEMORY_COLUMNS},
                       _scaling_title("Peak RSS (one process per worker count) against the "
                                      "design's bytes", provenance["parameters"]))


# ---------------------------------------------------------------- 6, 8. one run's split
SPLIT_COLUMNS = ("sphere_id", "role", "level", "group", "worker_index",
                 "compute_s", "wait_a_s", "wait_b_s", "reduce_s")


def _split_title(what: str, p: dict) -> str:
    return (f"{what}\n{p['split_workers']} workers, {p['split_preset']} preset, batch "
            f"{p['split_batch']} x {_block_size(p['split_preset'])} tokens, "
            f"{p['split_steps']} steps")


def _time_split_table(measurements, cfg) -> dict:
    return {c: measurements["split"][c] for c in SPLIT_COLUMNS}


def _draw_time_split(table, provenance):
    from crystalline.viz.plots import plot_time_split
    _columns(table, "time_split", *SPLIT_COLUMNS)
    return plot_time_split(table["sphere_id"], table, table["group"], table["role"],
                           _split_title("Where each sphere's step time goes (mean per step)",
                                        provenance["parameters"]))


def _group_load_table(measurements, cfg) -> dict:
    split = measurements["split"]
    loads = np.asarray(split["group_tokens_per_s"], dtype=float)     # (steps, 12)
    table = {"step": split["step"]}
    table.update({f"group_{g}": loads[:, g].tolist() for g in range(GROUPS)})
    return table


def _draw_group_load(table, provenance):
    from crystalline.viz.plots import plot_group_load
    _columns(table, "group_load", "step", *(f"group_{g}" for g in range(GROUPS)))
    n = provenance["parameters"]["split_workers"]
    per_group = [len(range(g, n, GROUPS)) for g in range(GROUPS)]
    loads = np.array([table[f"group_{g}"] for g in range(GROUPS)])
    return plot_group_load(table["step"], loads, per_group,
                           _split_title("Per-group load over time (tokens/s summed over each "
                                        "group's workers)", provenance["parameters"]))


def _fields(*names):
    return lambda cfg: {n: (list(v) if isinstance(v := getattr(cfg, n), tuple) else v)
                        for n in names}


SCALING = _fields("seed", "scaling_preset", "scaling_batch", "scaling_steps", "scaling_workers",
                  "sync_workers")
SPLIT = _fields("seed", "split_preset", "split_batch", "split_steps", "split_workers")
STRAGGLERS = _fields("seed", "straggler_preset", "straggler_batch", "straggler_workers",
                     "straggler_factors", "straggler_rounds", "straggler_mode")

SPECS = [
    FigureSpec("hierarchy_63", "the sphere tree for 63 workers (1 + 12 + 63 spheres), radial, "
               "coloured by symmetry group", True, None,
               lambda m, cfg: _hierarchy_table(63), _draw_hierarchy, lambda cfg: {"workers": 63}),
    FigureSpec("hierarchy_157", "the full 3-level lattice: 1 + 12 + 144 = 157 spheres", True, None,
               lambda m, cfg: _hierarchy_table(144), _draw_hierarchy,
               lambda cfg: {"workers": 144}),
    FigureSpec("kissing", "12 unit spheres kissing the central one at the cuboctahedron's "
               "vertices, coloured by symmetry group", True, None, _kissing_table, _draw_kissing),
    FigureSpec("loss_invariance", "loss curves of the same run on several worker counts, and "
               "their |difference| from the 1-worker curve", True, "loss", _loss_table,
               _draw_loss, _fields("seed", "loss_preset", "loss_batch", "loss_steps",
                                   "loss_workers")),
    FigureSpec("throughput", "tokens/s against worker count, with the ideal line for this "
               "machine's cores", False, "scaling", _throughput_table, _draw_throughput, SCALING),
    FigureSpec("sync_modes", "tokens/s lock-free against model_lock", False, "scaling",
               _sync_table, _draw_sync, SCALING),
    FigureSpec("time_split", "per-sphere time per step: compute, wait at A, wait at B, reduce",
               False, "split", _time_split_table, _draw_time_split, SPLIT),
    FigureSpec("memory", "peak RSS per worker count (one process each) against the design's "
               "bytes", False, "scaling", _memory_table, _draw_memory, SCALING),
    FigureSpec("group_load", "tokens/s of each of the 12 symmetry groups, step by step", False,
               "split", _group_load_table, _draw_group_load, SPLIT),
    FigureSpec("stragglers", "tokens/s and barrier efficiency against one worker's straggler "
               "factor, static against dynamic balancing", False, "stragglers",
               stragglers_table, draw_stragglers, STRAGGLERS),
]
FIGURES = {spec.name: spec for spec in SPECS}
