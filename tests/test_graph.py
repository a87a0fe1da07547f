"""The radial drawing of the hierarchy: positions, wedges, node counts, colour modes."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crystalline.engine.hierarchy import Hierarchy
from crystalline.errors import ConfigError
from crystalline.viz.graph import draw_hierarchy, radial_layout, radial_wedges

SHAPES = {"1": lambda: Hierarchy.for_workers(1), "12": lambda: Hierarchy.for_workers(12),
          "63": lambda: Hierarchy.for_workers(63), "144": lambda: Hierarchy.for_workers(144),
          "full3": lambda: Hierarchy.full(levels=3), "200": lambda: Hierarchy.for_workers(200)}


def turn_of(xy) -> float:
    """Clockwise turns from 12 o'clock, in [0, 1)."""
    return (math.atan2(xy[0], xy[1]) / (2 * math.pi)) % 1.0


def inside(turn, wedge, eps=1e-9) -> bool:
    """turn lies in [start, stop], modulo one full turn (wedges may start below 0)."""
    start, stop = wedge
    offset = (turn - start + eps) % 1.0
    return offset <= (stop - start) + 2 * eps


@pytest.mark.parametrize("name", SHAPES)
def test_positions_radii_and_wedges(name):
    h = SHAPES[name]()
    pos, wedges = radial_layout(h), radial_wedges(h)
    assert set(pos) == set(wedges) == {s.id for s in h}
    assert pos[0] == (0.0, 0.0) and wedges[0][1] - wedges[0][0] == pytest.approx(1.0)
    for s in h:
        assert math.hypot(*pos[s.id]) == pytest.approx(s.level)
        if s.parent is None:
            continue
        parent_wedge = wedges[s.parent.id]
        assert inside(turn_of(pos[s.id]), parent_wedge), f"{s} outside its parent's wedge"
        start, stop = wedges[s.id]
        assert parent_wedge[0] - 1e-12 <= start < stop <= parent_wedge[1] + 1e-12
        leaves = sum(1 for w in h.workers if _descends(w, s))
        assert stop - start == pytest.approx(leaves / len(h.workers))
    for s in h.controls:                                 # children tile the parent, in order
        kids = sorted(s.children, key=lambda c: c.position)
        assert wedges[kids[0].id][0] == pytest.approx(wedges[s.id][0])
        assert wedges[kids[-1].id][1] == pytest.approx(wedges[s.id][1])
        for a, b in zip(kids, kids[1:]):
            assert wedges[a.id][1] == pytest.approx(wedges[b.id][0])


def _descends(s, ancestor):
    while s is not None:
        if s is ancestor:
            return True
        s = s.parent
    return False


def test_group_zero_at_twelve_o_clock_and_clockwise():
    pos = radial_layout(Hierarchy.for_workers(12))
    assert pos[1] == pytest.approx((0.0, 1.0))           # worker 0 at the top
    assert pos[4] == pytest.approx((1.0, 0.0), abs=1e-12)    # group 3 at 3 o'clock
    h = Hierarchy.for_workers(144)
    level1 = [pos for s, pos in radial_layout(h).items() if h.spheres[s].level == 1]
    assert [round(turn_of(p) * 12, 9) for p in level1] == list(range(12))


def drawn_spheres(fig) -> int:
    ax = fig.axes[0]
    return sum(len(c.get_offsets()) for c in ax.collections
               if (c.get_gid() or "").startswith("spheres-"))


@pytest.mark.parametrize("name", SHAPES)
def test_draws_every_shape(name, tmp_path):
    h = SHAPES[name]()
    fig = draw_hierarchy(h)
    assert drawn_spheres(fig) == len(h)
    path = tmp_path / f"h{name}.png"
    fig.savefig(path, dpi=50)
    assert path.stat().st_size > 5_000


def test_marker_kinds():
    h = Hierarchy.for_workers(63)
    gids = {c.get_gid(): len(c.get_offsets()) for c in draw_hierarchy(h).axes[0].collections
            if c.get_gid()}
    assert gids == {"spheres-node-zero": 1, "spheres-control": 12, "spheres-worker": 63}


def test_values_colouring_with_dict_and_array(tmp_path):
    h = Hierarchy.for_workers(63)
    throughput = {w.id: 100.0 + w.worker_index for w in h.workers}      # controls: no data
    fig = draw_hierarchy(h, color_by="throughput", values=throughput, title="tokens/s")
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "throughput (tokens/s)"
    workers = next(c for c in fig.axes[0].collections if c.get_gid() == "spheres-worker")
    colours = workers.get_facecolors()
    assert len({tuple(c) for c in np.round(colours, 6)}) > 30      # a gradient, not one colour
    assert "no data" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    fig.savefig(tmp_path / "tp.png", dpi=50)

    memory = np.full(len(h), 5 * 2**20, dtype=float)
    memory[0] = 40 * 2**20
    fig = draw_hierarchy(h, color_by="memory", values=memory)
    assert fig.axes[1].get_ylabel() == "memory (MiB)"
    fig.savefig(tmp_path / "mem.png", dpi=50)


def test_role_colouring_and_labels():
    h = Hierarchy.for_workers(20)
    fig = draw_hierarchy(h, color_by="role", labels={0: "root", 5: "five"})
    assert {t.get_text() for t in fig.axes[0].texts} == {"root", "five"}
    assert not draw_hierarchy(h, labels=False).axes[0].texts
    auto = {t.get_text() for t in draw_hierarchy(h).axes[0].texts}
    assert {"N0", "g0", "g11"} <= auto


@pytest.mark.parametrize("kwargs, message", [
    ({"color_by": "colour"}, "use one of"),
    ({"color_by": "throughput"}, "needs values"),
    ({"color_by": "memory", "values": [1.0, 2.0]}, "one per sphere id"),
    ({"color_by": "throughput", "values": {999: 1.0}}, "not sphere ids"),
    ({"color_by": "group", "values": {0: 1.0}}, "only with color_by='throughput' or 'memory'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        draw_hierarchy(Hierarchy.for_workers(13), **kwargs)


def test_into_existing_axes_and_no_pyplot():
    code = ("import sys, threading\n"
            "from matplotlib.figure import Figure\n"
            "from crystalline.engine.hierarchy import Hierarchy\n"
            "from crystalline.viz.graph import draw_hierarchy\n"
            "from crystalline.viz.geometry import draw_kissing\n"
            "fig = Figure(); ax = fig.add_subplot()\n"
            "assert draw_hierarchy(Hierarchy.for_workers(5), ax=ax) is fig\n"
            "t = threading.Thread(target=lambda: draw_kissing().savefig('/dev/null', format='png'))\n"
            "t.start(); t.join()\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=repo)
    assert result.returncode == 0, result.stderr
