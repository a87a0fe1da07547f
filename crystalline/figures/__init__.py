"""Every figure of the notebooks, regenerated from fixed configs and seeds, with its data.

    from crystalline.figures import make_all, FIGURE_NAMES
    paths = make_all("figures/", quick=True)           # measure, write data, draw, save
    make_all("figures/", only=["throughput"], from_data=True)   # redraw from saved data
    crystalline figures --out figures/ [--quick] [--from-data] [--only NAME ...]

Each figure NAME is written as NAME.png, NAME.svg, NAME.csv (exactly the data drawn) and
NAME.config.json (what it was made from: config, package versions, machine; no timestamps).
Figures from deterministic data (hierarchies, kissing, loss invariance) are byte-identical
each time they are made on one machine; timing figures are redrawn from their data file.
"""

from __future__ import annotations

from pathlib import Path

from crystalline.errors import ConfigError, DataError
from crystalline.figures.catalog import FIGURES, scaling_configs
from crystalline.figures.configs import CONFIGS, FULL, QUICK, SMALL, FigureConfig

FIGURE_NAMES = tuple(FIGURES)
__all__ = ["FIGURE_NAMES", "FIGURES", "FULL", "QUICK", "SMALL", "FigureConfig", "make_all",
           "draw_saved", "draw_measured", "figure_files", "scaling_configs"]


def figure_files(out, name: str) -> dict[str, Path]:
    """{"png", "svg", "data", "config"}: the paths of one figure's files under `out`."""
    base = Path(out) / name
    return {"png": base.with_suffix(".png"), "svg": base.with_suffix(".svg"),
            "data": base.with_suffix(".csv"), "config": Path(f"{base}.config.json")}


def _check_names(only) -> list[str]:
    if only is None:
        return list(FIGURE_NAMES)
    if isinstance(only, str):
        only = [only]
    unknown = [n for n in only if n not in FIGURES]
    if unknown or not only:
        raise ConfigError(f"unknown figure name(s) {unknown}; "
                          f"choose from {', '.join(FIGURE_NAMES)}")
    return list(dict.fromkeys(only))


def _check_out(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the figures (it is created "
                          "if missing)")
    return out


def draw_saved(out, name: str):
    """The Figure `name` drawn from its saved data and config JSON under `out`."""
    from crystalline.figures.output import figure_style, read_json, read_table
    files = figure_files(out, name)
    table, provenance = read_table(files["data"]), read_json(files["config"])
    if provenance.get("figure") != name or "parameters" not in provenance:
        raise DataError(f"{files['config']} is not the config of figure {name!r}; regenerate it "
                        "(crystalline figures without --from-data)")
    with figure_style():
        return FIGURES[name].draw(table, provenance)


def draw_measured(name: str, measurements: dict, cfg: FigureConfig):
    """The Figure `name` drawn straight from measurements (as crystalline.figures.measure
    returns them: {"loss": ..., "scaling": ..., "split": ...}), writing nothing.

        runs = measure.measure_scaling(QUICK, scaling_configs(QUICK, ["throughput"]))
        fig = draw_measured("throughput", {"scaling": runs}, QUICK)
    """
    from crystalline.figures.output import figure_style
    spec = FIGURES[_check_names([name])[0]]
    with figure_style():
        return spec.draw(spec.table(measurements, cfg), {"parameters": spec.parameters(cfg)})


def _save_drawn(out, name: str) -> list[Path]:
    from crystalline.figures.output import figure_style, save_figure
    fig = draw_saved(out, name)
    with figure_style():
        return save_figure(fig, Path(out) / name)


def make_all(out="figures", quick: bool = False, only=None, from_data: bool = False,
             progress: bool = True, config: FigureConfig | None = None) -> dict[str, list[Path]]:
    """Make the figures `only` (default all) under `out`; returns {name: files written}.

    quick: the QUICK config (tests, < 2 min) instead of FULL; config: any other FigureConfig.
    from_data: redraw PNG and SVG from each figure's saved CSV and config JSON, measuring
    nothing (the data and config files are left as they are).
    """
    from tqdm.auto import tqdm

    out, names = _check_out(out), _check_names(only)
    if from_data:
        missing = [str(p) for n in names for k, p in figure_files(out, n).items()
                   if k in ("data", "config") and not p.is_file()]
        if missing:
            raise DataError(f"--from-data needs each figure's saved data, but {len(missing)} "
                            f"file(s) are missing ({missing[0]}, ...); make the figures first "
                            f"(crystalline figures --out {out})")
        written = {}
        for name in tqdm(names, disable=not progress, unit="figure", desc="redraw"):
            written[name] = _save_drawn(out, name)
        return written

    cfg = config or (QUICK if quick else FULL)
    out.mkdir(parents=True, exist_ok=True)
    needs = {FIGURES[n].needs for n in names}
    configs = scaling_configs(cfg, names) if "scaling" in needs else []
    total = (len(cfg.loss_workers) * ("loss" in needs) + len(configs)
             + cfg.split_steps * ("split" in needs) + cfg.straggler_rounds * ("stragglers" in needs)
             + len(names))
    with tqdm(total=total, disable=not progress, unit="task", desc=f"figures ({cfg.mode})",
              dynamic_ncols=True) as bar:
        def done(what=None):
            if what:
                bar.set_postfix_str(what, refresh=False)
            bar.update(1)

        measurements = _measure(cfg, needs, configs, done)
        written = {}
        for name in names:
            bar.set_postfix_str(f"drawing {name}", refresh=False)
            written[name] = _write_figure(out, name, cfg, measurements)
            done()
    return written


def _measure(cfg, needs, configs, done) -> dict:
    from crystalline.figures import measure
    measurements = {}
    if "loss" in needs:
        measurements["loss"] = measure.run_losses(cfg, on_done=done)
    if configs:
        measurements["scaling"] = measure.measure_scaling(cfg, configs, on_done=done)
    if "split" in needs:
        measurements["split"] = measure.measure_split(cfg, on_step=lambda: done("time split"))
    if "stragglers" in needs:
        measurements["stragglers"] = measure.measure_stragglers(
            cfg.straggler_preset, cfg.straggler_batch, cfg.seed, cfg.straggler_workers,
            list(cfg.straggler_factors), cfg.straggler_rounds, cfg.straggler_mode, on_done=done)
    return measurements


def _write_figure(out: Path, name: str, cfg: FigureConfig, measurements) -> list[Path]:
    from crystalline.figures.output import machine, versions, write_json, write_table
    spec, files = FIGURES[name], figure_files(out, name)
    write_table(files["data"], spec.table(measurements, cfg))
    write_json(files["config"], {
        "figure": name, "description": spec.description,
        "deterministic": spec.deterministic,
        "files": {k: p.name for k, p in files.items()},
        "mode": cfg.mode, "parameters": spec.parameters(cfg), "config": cfg.to_dict(),
        "versions": versions(), "machine": machine()})
    return [files["data"], files["config"], *_save_drawn(out, name)]
