"""Writing figures and their data reproducibly: fixed rcParams, PNG and SVG without dates,
CSV tables that round-trip floats exactly, and a provenance JSON per figure.

    with figure_style():
        fig = draw(...)
        save_figure(fig, out / "throughput")          # throughput.png + throughput.svg
    write_table(out / "throughput.csv", {"workers": [1, 2], "tokens_per_s": [9e2, 1.7e3]})
    table = read_table(out / "throughput.csv")       # {column: list}, same values
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
from pathlib import Path

import matplotlib

from crystalline.io import atomic_write_bytes
from crystalline.errors import DataError

DPI = 110
STYLE = {
    "svg.hashsalt": "crystalline",   # fixed ids inside the SVG
    "svg.fonttype": "path",          # text as paths: no dependence on installed fonts
    "font.family": "DejaVu Sans",    # bundled with matplotlib
    "font.size": 10,
    "axes.titlesize": 11,
    "savefig.dpi": DPI,
}


@contextlib.contextmanager
def figure_style():
    """rcParams every figure is drawn and saved under."""
    with matplotlib.rc_context(STYLE):
        yield


def save_figure(fig, base: Path) -> list[Path]:
    """base.png and base.svg, byte-identical whenever the figure is: no dates, no software tag."""
    paths = []
    for suffix, metadata in ((".png", {"Software": None}),
                             (".svg", {"Date": None, "Creator": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], dpi=DPI, metadata=metadata)
        paths.append(atomic_write_bytes(base.with_suffix(suffix), buf.getvalue()))
    return paths


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)                           # shortest exact round trip
    return str(value)


def _parse(cell: str):
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def write_table(path: Path, table: dict) -> Path:
    """A CSV of equal-length columns; floats written with repr, so they read back exactly."""
    columns = list(table)
    lengths = {len(table[c]) for c in columns}
    if len(lengths) != 1:
        raise ValueError(f"columns of unequal length: { {c: len(table[c]) for c in columns} }")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*(table[c] for c in columns)):
        writer.writerow([_cell(v.item() if hasattr(v, "item") else v) for v in row])
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_table(path: Path) -> dict:
    """{column: list of int | float | str} from a CSV written by write_table."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no data file {path}; make the figure first "
                        "(crystalline figures without --from-data)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read data file {path}: {e}") from None
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise DataError(f"data file {path} is empty or has ragged rows; regenerate it "
                        "(crystalline figures without --from-data)")
    return {name: [_parse(r[i]) for r in rows[1:]] for i, name in enumerate(rows[0])}


def write_json(path: Path, doc: dict) -> Path:
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file {path}; make the figure first "
                        "(crystalline figures without --from-data)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; regenerate it "
                        "(crystalline figures without --from-data)") from None


def versions() -> dict:
    import numba
    import numpy

    import crystalline
    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "matplotlib": matplotlib.__version__,
            "crystalline": crystalline.__version__}


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "machine": platform.machine()}
