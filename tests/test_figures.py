"""`crystalline figures`: every file made and valid, data equal to what is drawn, deterministic
figures byte-identical when made twice, --from-data redraws identical images, CLI errors."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from crystalline import cli
from crystalline.errors import ConfigError, DataError
from crystalline.figures import FIGURE_NAMES, FIGURES, QUICK, draw_saved, figure_files, make_all
from crystalline.figures.output import read_table
from crystalline.viz.geometry import kissing_centres

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DETERMINISTIC = [n for n in FIGURE_NAMES if FIGURES[n].deterministic]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `crystalline figures --quick` run through the CLI, shared by this module."""
    out = tmp_path_factory.mktemp("figures") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTALLINE_CACHE", str(tmp_path_factory.mktemp("figures-cache")))
        assert cli.main(["figures", "--out", str(out), "--quick", "--no-progress"]) == 0
    return out


def test_expected_figures():
    assert set(FIGURE_NAMES) == {"hierarchy_63", "hierarchy_157", "kissing", "loss_invariance",
                                 "throughput", "sync_modes", "time_split", "memory", "group_load",
                                 "stragglers"}
    assert set(DETERMINISTIC) == {"hierarchy_63", "hierarchy_157", "kissing", "loss_invariance"}


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_every_file_exists_and_is_valid(quick, name):
    files = figure_files(quick, name)
    png = files["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    image = imread(files["png"])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01                             # not a blank canvas
    root = ET.parse(files["svg"]).getroot()
    assert root.tag.endswith("svg")
    table = read_table(files["data"])
    assert table and all(len(column) > 0 for column in table.values())
    doc = json.loads(files["config"].read_text())
    assert doc["figure"] == name and doc["mode"] == "quick" and doc["config"] == QUICK.to_dict()
    assert set(doc["versions"]) >= {"numpy", "numba", "matplotlib", "crystalline"}
    assert set(doc["machine"]) >= {"cpu_count", "platform", "processor"}
    assert doc["files"]["data"] == files["data"].name


def _keys(doc):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from _keys(v)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_provenance_has_no_timings(quick, name):
    doc = json.loads(figure_files(quick, name)["config"].read_text())
    timing = [k for k in _keys(doc) if any(w in k.lower() for w in ("time", "date", "second"))]
    assert timing == []


def test_deterministic_figures_are_byte_identical_when_made_twice(quick, tmp_path):
    make_all(tmp_path, quick=True, only=DETERMINISTIC, progress=False)
    for name in DETERMINISTIC:
        for kind, path in figure_files(tmp_path, name).items():
            assert path.read_bytes() == figure_files(quick, name)[kind].read_bytes(), \
                f"{name} {kind} differs between two makes"


def test_from_data_redraws_identical_images(quick, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(quick, out)
    for p in out.glob("*.png"):
        p.write_bytes(b"stale")
    before = {p.name: p.read_bytes() for p in out.glob("*") if p.suffix in (".csv", ".json")}
    assert cli.main(["figures", "--out", str(out), "--from-data", "--no-progress"]) == 0
    for name in FIGURE_NAMES:
        for kind in ("png", "svg"):
            assert figure_files(out, name)[kind].read_bytes() == \
                figure_files(quick, name)[kind].read_bytes(), f"{name}.{kind} redraw differs"
    assert {n: (out / n).read_bytes() for n in before} == before     # data left as it was


def _by_gid(artists, gid):
    found = [a for a in artists if a.get_gid() == gid]
    assert found, f"nothing drawn with gid {gid!r}"
    return found


def test_loss_data_is_what_is_drawn_and_curves_coincide(quick):
    table = read_table(figure_files(quick, "loss_invariance")["data"])
    ax = draw_saved(quick, "loss_invariance").axes[0]
    for w in QUICK.loss_workers:
        (line,) = _by_gid(ax.lines, f"loss-{w}")
        np.testing.assert_array_equal(line.get_xdata(), table["step"])
        np.testing.assert_array_equal(line.get_ydata(), table[f"loss_{w}"])
    assert len(table["step"]) == QUICK.loss_steps
    for w in QUICK.loss_workers[1:]:
        diff = np.abs(np.subtract(table[f"loss_{w}"], table[f"loss_{QUICK.loss_workers[0]}"]))
        np.testing.assert_array_equal(diff, table[f"absdiff_{w}"])
        assert diff.max() < 1e-5                          # the invariance the figure shows
    assert table["loss_1"][-1] < table["loss_1"][0] - 0.5   # and the run does learn


def test_scaling_data_is_what_is_drawn(quick):
    t = read_table(figure_files(quick, "throughput")["data"])
    assert t["workers"] == list(QUICK.scaling_workers)
    ax = draw_saved(quick, "throughput").axes[0]
    np.testing.assert_array_equal(_by_gid(ax.lines, "measured")[0].get_ydata(), t["tokens_per_s"])
    np.testing.assert_array_equal(_by_gid(ax.lines, "ideal")[0].get_ydata(),
                                  t["ideal_tokens_per_s"])
    np.testing.assert_array_equal(_by_gid(ax.lines, "median")[0].get_ydata(),
                                  t["median_tokens_per_s"])
    assert all(m <= b for m, b in zip(t["median_tokens_per_s"], t["tokens_per_s"]))
    cores = t["cores"][0]
    assert t["ideal_tokens_per_s"] == [t["tokens_per_s"][0] * min(w, cores) for w in t["workers"]]

    s = read_table(figure_files(quick, "sync_modes")["data"])
    assert s["workers"] == list(QUICK.sync_workers)
    ax = draw_saved(quick, "sync_modes").axes[0]
    for sync in ("lock_free", "model_lock"):
        heights = [p.get_height() for p in _by_gid(ax.patches, f"bars-{sync}")]
        np.testing.assert_array_equal(heights, s[f"{sync}_tokens_per_s"])
    assert s["lock_free_tokens_per_s"][0] == t["tokens_per_s"][t["workers"].index(2)]

    m = read_table(figure_files(quick, "memory")["data"])
    ax = draw_saved(quick, "memory").axes[0]
    np.testing.assert_allclose(_by_gid(ax.lines, "peak-rss")[0].get_ydata(),
                               np.divide(m["peak_rss_bytes"], 2**20))
    heights = [p.get_height() for p in _by_gid(ax.patches, "bars-grads_bytes")]
    np.testing.assert_allclose(heights, np.divide(m["grads_bytes"], 2**20))
    assert all(p > b for p, b in zip(m["peak_rss_bytes"], m["baseline_rss_bytes"]))
    assert m["grads_bytes"][-1] > m["grads_bytes"][0]      # one gradient segment per worker


def test_split_data_is_what_is_drawn(quick):
    t = read_table(figure_files(quick, "time_split")["data"])
    n = QUICK.split_workers
    assert len(t["sphere_id"]) == 1 + 12 + n and t["role"].count("worker") == n
    ax = draw_saved(quick, "time_split").axes[0]
    for part in ("compute_s", "wait_a_s", "wait_b_s", "reduce_s"):
        heights = [p.get_height() for p in _by_gid(ax.patches, f"bars-{part}")]
        np.testing.assert_allclose(heights, np.multiply(t[part], 1e3))
    workers = [i for i, r in enumerate(t["role"]) if r == "worker"]
    assert all(t["compute_s"][i] > 0 for i in workers)
    assert all(t["compute_s"][i] == 0 for i in range(len(t["role"])) if i not in workers)

    g = read_table(figure_files(quick, "group_load")["data"])
    assert len(g["step"]) == QUICK.split_steps
    (image,) = _by_gid(draw_saved(quick, "group_load").axes[0].images, "group-load")
    np.testing.assert_array_equal(image.get_array(), [g[f"group_{k}"] for k in range(12)])
    assert all(v > 0 for k in range(12) for v in g[f"group_{k}"])


def test_stragglers_data_is_what_is_drawn(quick):
    t = read_table(figure_files(quick, "stragglers")["data"])
    assert t["factor"] == list(QUICK.straggler_factors)
    assert t["rounds"] == [QUICK.straggler_rounds] * len(t["factor"])
    top, bottom = draw_saved(quick, "stragglers").axes
    for balance in ("static", "dynamic"):
        (line,) = _by_gid(top.lines, f"tokens-{balance}")
        np.testing.assert_array_equal(line.get_xdata(), t["factor"])
        np.testing.assert_array_equal(line.get_ydata(), t[f"{balance}_tokens_per_s"])
        (line,) = _by_gid(bottom.lines, f"efficiency-{balance}")
        np.testing.assert_allclose(line.get_ydata(), np.multiply(t[f"{balance}_efficiency"], 100))
        assert all(0 < e <= 1 for e in t[f"{balance}_efficiency"])
    # A straggler slows static steps down; its efficiency drops with the factor.
    assert t["static_tokens_per_s"][-1] < t["static_tokens_per_s"][0]
    assert t["static_efficiency"][-1] < t["static_efficiency"][0]


@pytest.mark.parametrize("name, workers", [("hierarchy_63", 63), ("hierarchy_157", 144)])
def test_hierarchy_data_is_what_is_drawn(quick, name, workers):
    t = read_table(figure_files(quick, name)["data"])
    assert len(t["sphere_id"]) == 1 + 12 + workers and t["role"].count("worker") == workers
    ax = draw_saved(quick, name).axes[0]
    (scatter,) = _by_gid(ax.collections, "spheres-worker")
    rows = sorted((i for i, r in enumerate(t["role"]) if r == "worker"),
                  key=lambda i: t["worker_index"][i])             # drawn in worker order
    np.testing.assert_allclose(scatter.get_offsets(),
                               np.column_stack([t["x"], t["y"]])[rows])


def test_kissing_data(quick):
    t = read_table(figure_files(quick, "kissing")["data"])
    centres = np.column_stack([t["x"], t["y"], t["z"]])
    np.testing.assert_allclose(centres[1:], kissing_centres())
    np.testing.assert_allclose(np.linalg.norm(centres[1:], axis=1), 2.0)
    gaps = np.linalg.norm(centres[1:, None] - centres[None, 1:], axis=2)[~np.eye(12, dtype=bool)]
    assert gaps.min() >= 2.0 - 1e-12                       # touching the centre, no overlap


def test_from_data_refuses_data_of_another_shape(quick, tmp_path):
    shutil.copytree(quick, tmp_path, dirs_exist_ok=True)
    figure_files(tmp_path, "kissing")["data"].write_text("x,y,z,radius\n0.0,0.0,0.0,2.0\n")
    with pytest.raises(DataError, match="cuboctahedron"):
        make_all(tmp_path, only=["kissing"], from_data=True, progress=False)


def _error(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crystalline: error:") and "\n" not in err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "is a file" in _error(["figures", "--out", str(a_file), "--quick"], capsys)
    assert "unknown figure name" in _error(["figures", "--out", str(tmp_path), "--only", "nope"],
                                           capsys)
    empty = tmp_path / "empty"
    assert "make the figures first" in _error(["figures", "--out", str(empty), "--from-data"],
                                              capsys)
    assert "--quick" in _error(["figures", "--out", str(empty), "--from-data", "--quick"], capsys)
    assert not empty.exists()                              # nothing was created on error
    with pytest.raises(ConfigError):
        make_all(a_file)
    with pytest.raises(DataError):
        make_all(empty, only=["memory"], from_data=True)


def test_drawing_code_never_imports_pyplot():
    code = ("import sys, crystalline.figures, crystalline.figures.measure, crystalline.viz.plots;"
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


COMMITTED = Path(__file__).parent.parent / "figures"


def test_committed_figures_are_complete_and_redraw_from_their_data(quick, tmp_path):
    shutil.copytree(COMMITTED, tmp_path, dirs_exist_ok=True)
    make_all(tmp_path, from_data=True, progress=False)          # every figure redraws
    for name in FIGURE_NAMES:
        doc = json.loads(figure_files(COMMITTED, name)["config"].read_text())
        assert doc["mode"] == "full" and doc["figure"] == name
        assert figure_files(COMMITTED, name)["png"].read_bytes().startswith(PNG_SIGNATURE)
    for name in ("hierarchy_63", "hierarchy_157", "kissing"):  # data the code makes today
        assert read_table(figure_files(COMMITTED, name)["data"]) == \
            read_table(figure_files(quick, name)["data"])
