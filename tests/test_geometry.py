"""The kissing configuration: 12 unit spheres touch the central one and never overlap."""

import itertools
import threading

import numpy as np
import pytest

from crystalline.errors import ConfigError
from crystalline.viz.geometry import GROUP_COLORS, draw_kissing, kissing_centres


@pytest.mark.parametrize("radius", [1.0, 0.5, 3.0])
def test_every_outer_sphere_touches_the_centre(radius):
    centres = kissing_centres(radius)
    assert centres.shape == (12, 3)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2 * radius, rtol=0, atol=1e-12)


@pytest.mark.parametrize("radius", [1.0, 0.5, 3.0])
def test_no_two_outer_spheres_overlap(radius):
    centres = kissing_centres(radius)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(centres, 2)]
    assert min(distances) >= 2 * radius - 1e-12
    # the cuboctahedron: each sphere touches exactly 4 neighbours (24 touching pairs)
    assert sum(abs(d - 2 * radius) < 1e-12 for d in distances) == 24


def test_centres_are_distinct_cuboctahedron_vertices():
    centres = kissing_centres()
    assert len({tuple(np.round(c, 9)) for c in centres}) == 12
    unit = np.round(centres / np.sqrt(2), 12)            # back to permutations of (+-1, +-1, 0)
    assert all(sorted(np.abs(u)) == [0, 1, 1] for u in unit)
    np.testing.assert_allclose(centres.sum(axis=0), 0, atol=1e-12)   # symmetric about 0


def test_radius_must_be_positive():
    with pytest.raises(ConfigError, match="positive sphere radius"):
        kissing_centres(0)


def test_palette_has_12_distinct_colours():
    assert len(GROUP_COLORS) == len(set(GROUP_COLORS)) == 12


def test_draws_to_png(tmp_path):
    fig = draw_kissing(highlight_groups=[0, 5])
    path = tmp_path / "kissing.png"
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert ax.name == "3d"
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(g) for g in range(12))
    assert np.allclose(ax.get_box_aspect() / ax.get_box_aspect()[0], 1)   # round spheres


def test_draws_from_another_thread(tmp_path):
    errors = []

    def draw():
        try:
            draw_kissing(colors=["#444444"] * 12).savefig(tmp_path / "t.png", dpi=40)
        except Exception as e:                           # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=draw)
    t.start()
    t.join()
    assert not errors and (tmp_path / "t.png").stat().st_size > 0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="pass 12"):
        draw_kissing(colors=["red"] * 3)
    with pytest.raises(ConfigError, match="use numbers 0..11"):
        draw_kissing(highlight_groups=[12])
    from matplotlib.figure import Figure
    with pytest.raises(ConfigError, match="3-D axes"):
        draw_kissing(ax=Figure().add_subplot())
