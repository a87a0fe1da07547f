"""The `stragglers` figure: tokens/s and barrier efficiency against one worker's straggler
factor, static against dynamic balancing (medians over alternated rounds).

    rows = measure.measure_stragglers(...)          # one row per measured step
    table = stragglers_table({"stragglers": rows}, cfg)
    fig = draw_stragglers(table, {"parameters": {...}})
"""

from __future__ import annotations

import statistics

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crystalline.errors import DataError

BALANCE_STYLES = {"static": {"color": "#c44e52", "marker": "o"},
                  "dynamic": {"color": "#4c72b0", "marker": "s"}}
COLUMNS = ("factor", "static_tokens_per_s", "dynamic_tokens_per_s", "static_efficiency",
           "dynamic_efficiency", "dynamic_over_static", "rounds")


def stragglers_table(measurements, cfg) -> dict:
    """Per factor: median tokens/s and step efficiency of each balance, and the median of the
    per-round dynamic / static ratios."""
    rows = measurements["stragglers"]
    table = {c: [] for c in COLUMNS}
    for factor in cfg.straggler_factors:
        def of(balance, key):
            return [r[key] for r in rows if r["factor"] == factor and r["balance"] == balance]
        static, dynamic = of("static", "tokens_per_s"), of("dynamic", "tokens_per_s")
        table["factor"].append(float(factor))
        for balance in ("static", "dynamic"):
            table[f"{balance}_tokens_per_s"].append(statistics.median(of(balance, "tokens_per_s")))
            table[f"{balance}_efficiency"].append(statistics.median(of(balance, "efficiency")))
        table["dynamic_over_static"].append(statistics.median(d / s for s, d in zip(static, dynamic)))
        table["rounds"].append(len(static))
    return table


def draw_stragglers(table, provenance) -> Figure:
    missing = [c for c in COLUMNS if c not in table]
    if missing or not table["factor"]:
        raise DataError(f"data of figure 'stragglers' lacks column(s) {missing or 'rows'}; "
                        "regenerate it (crystalline figures without --from-data)")
    p = provenance["parameters"]
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for balance, style in BALANCE_STYLES.items():
        top.plot(table["factor"], table[f"{balance}_tokens_per_s"], label=balance,
                 gid=f"tokens-{balance}", **style)
        bottom.plot(table["factor"], [100 * e for e in table[f"{balance}_efficiency"]],
                    label=balance, gid=f"efficiency-{balance}", **style)
    for x, y, ratio in zip(table["factor"], table["dynamic_tokens_per_s"], table["dynamic_over_static"]):
        top.annotate(f"{ratio:.2f}x", (x, y), textcoords="offset points", xytext=(0, 7),
                     ha="center", fontsize=8, color=BALANCE_STYLES["dynamic"]["color"])
    top.set_ylabel("tokens/s")
    top.set_ylim(bottom=0)
    top.set_title(f"One slowed worker of {p['straggler_workers']}: {p['straggler_preset']} preset, "
                  f"batch {p['straggler_batch']}, {p['straggler_mode']} straggler\n"
                  f"medians over {p['straggler_rounds']} alternated rounds "
                  "(labels: dynamic / static, median of per-round ratios)", fontsize=10)
    bottom.set_ylabel("barrier efficiency (%)\ncompute / (workers x step time)")
    bottom.set_ylim(0, 105)
    bottom.set_xlabel("straggler factor of worker 0 (1 = not slowed)")
    bottom.set_xticks(table["factor"])
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=9)
    return fig
