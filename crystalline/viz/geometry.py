"""The kissing configuration: 12 equal spheres touching one central sphere, in 3-D.

    from crystalline.viz.geometry import kissing_centres, draw_kissing, GROUP_COLORS
    c = kissing_centres()            # (12, 3): cuboctahedron vertices at distance 2 from 0
    fig = draw_kissing(highlight_groups=[0, 5]); fig.savefig("kissing.png")

Outer sphere g is symmetry group g, coloured GROUP_COLORS[g] (crystalline.viz.style: the palette every
view of the hierarchy uses). Object API only (no pyplot), so figures draw from any thread with Agg.
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib import patheffects
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from crystalline.errors import ConfigError
from crystalline.viz.style import GROUP_COLORS, NODE_ZERO_COLOR  # noqa: F401 - re-exported



def kissing_centres(radius: float = 1.0) -> np.ndarray:
    """Centres of the 12 spheres of radius r touching a central one at the origin.

    The cuboctahedron's vertices: permutations of (+-1, +-1, 0), scaled to distance 2r. Order:
    the 4 with z > 0, then the 4 with z = 0, then the 4 with z < 0, each by azimuth.
    """
    if not radius > 0:
        raise ConfigError(f"radius = {radius!r} is invalid: use a positive sphere radius")
    vertices = {p for signs in itertools.product((1, -1), repeat=2)
                for p in itertools.permutations((signs[0], signs[1], 0))}
    order = sorted(vertices, key=lambda p: (-p[2], np.arctan2(p[1], p[0]) % (2 * np.pi)))
    return np.array(order, dtype=float) * (2 * radius / np.sqrt(2))   # (12, 3)


def _sphere_faces(centre, radius, n_lon=28, n_lat=14):
    """Quads of a latitude-longitude mesh: (n_lon * n_lat, 4, 3) corners and (.., 3) normals."""
    lon = np.linspace(0, 2 * np.pi, n_lon + 1)
    lat = np.linspace(0, np.pi, n_lat + 1)
    unit = np.stack([np.outer(np.sin(lat), np.cos(lon)),
                     np.outer(np.sin(lat), np.sin(lon)),
                     np.outer(np.cos(lat), np.ones_like(lon))], axis=-1)   # (n_lat+1, n_lon+1, 3)
    corners = np.stack([unit[:-1, :-1], unit[:-1, 1:], unit[1:, 1:], unit[1:, :-1]], axis=2)
    corners = corners.reshape(-1, 4, 3)
    normals = corners.mean(axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return centre + radius * corners, normals


def _view_vector(elev: float, azim: float) -> np.ndarray:
    el, az = np.radians(elev), np.radians(azim)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def _label_points(centres: np.ndarray, view: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """Per outer sphere, the visible surface point nearest its screen-centre (orthographic view).

    A point is visible when the ray from it towards the viewer misses every other sphere; the
    label goes where the visible part is widest, facing us; a sphere hidden entirely gets the
    point beyond its silhouette that points away from the middle.
    """
    golden = np.pi * (3 - np.sqrt(5))                  # Fibonacci sampling of the front half
    k = np.arange(400)
    z = 1 - (k + 0.5) / 400                            # along the view vector, 1 = facing us
    ring = np.sqrt(1 - z**2)
    u = np.cross(view, [0, 0, 1] if abs(view[2]) < 0.9 else [1, 0, 0])
    u /= np.linalg.norm(u)
    w = np.cross(view, u)
    dirs = (z[:, None] * view + ring[:, None] * (np.cos(golden * k)[:, None] * u
                                                + np.sin(golden * k)[:, None] * w))
    points = []
    for i, c in enumerate(centres[1:], start=1):
        candidates = c + 1.02 * radius * dirs           # (400, 3), best-facing first
        margin = np.full(len(candidates), np.inf)       # screen gap to the nearest occluder
        for j, other in enumerate(centres):
            if j == i:
                continue
            rel = other - candidates                    # ray p + t * view, t > 0, hits `other`?
            t = rel @ view
            gap = np.linalg.norm(rel - t[:, None] * view, axis=1) - radius
            margin = np.minimum(margin, np.where(t > 0, gap, np.inf))
        if (margin > 0).any():                          # well inside the visible part, facing us
            score = np.where(margin > 0, np.minimum(margin, 0.5) + 0.2 * z, -np.inf)
            points.append(candidates[np.argmax(score)])
        else:
            out = c - (c @ view) * view
            points.append(c + 1.3 * radius * out / np.linalg.norm(out))
    return np.array(points)


def draw_kissing(ax=None, highlight_groups=None, colors=None) -> Figure:
    """Draw the central sphere and its 12 kissing neighbours, shaded, labelled 0..11.

    highlight_groups: groups drawn opaque (the rest faded); None highlights all.
    colors: 12 matplotlib colours replacing GROUP_COLORS. ax: an existing 3-D axes to draw into.
    Returns the Figure.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    colors = GROUP_COLORS if colors is None else tuple(colors)
    if len(colors) != 12:
        raise ConfigError(f"colors has {len(colors)} entries; pass 12, one per symmetry group")
    highlight = set(range(12)) if highlight_groups is None else set(highlight_groups)
    if not highlight <= set(range(12)):
        raise ConfigError(f"highlight_groups {sorted(highlight - set(range(12)), key=str)} are not "
                          "symmetry groups; use numbers 0..11")
    if ax is None:
        fig = Figure(figsize=(6.5, 6.5), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    elif getattr(ax, "name", None) != "3d":
        raise ConfigError("draw_kissing needs a 3-D axes: fig.add_subplot(projection='3d')")

    light = np.array([-0.4, -0.6, 0.7]) / np.linalg.norm([-0.4, -0.6, 0.7])
    centres = np.vstack([np.zeros((1, 3)), kissing_centres()])
    polys, facecolors = [], []
    for k, centre in enumerate(centres):
        faces, normals = _sphere_faces(centre, 1.0)
        rgba = np.array(to_rgba(NODE_ZERO_COLOR if k == 0 else colors[k - 1]))
        if k > 0 and (k - 1) not in highlight:
            rgba[:3] = 0.35 * rgba[:3] + 0.65          # washed out
            rgba[3] = 0.25
        shade = 0.45 + 0.55 * np.clip(normals @ light, 0, 1)
        face_rgba = np.tile(rgba, (len(faces), 1))
        face_rgba[:, :3] *= shade[:, None]
        polys.append(faces)
        facecolors.append(face_rgba)
    # One collection so faces of different spheres are depth-sorted against each other.
    ax.add_collection3d(Poly3DCollection(np.concatenate(polys), edgecolors="none", linewidths=0,
                                         facecolors=np.concatenate(facecolors)))
    elev, azim = 32, -45        # near the 3-fold axis: every sphere shows a part
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for g, point in enumerate(_label_points(centres, _view_vector(elev, azim))):
        ax.text(*point, str(g), ha="center", va="center", fontsize=12, fontweight="bold",
                color="white" if g in highlight else "#eeeeee", zorder=10,
                path_effects=outline if g in highlight else
                [patheffects.withStroke(linewidth=2, foreground="#aaaaaa")])
    lim = 3.05
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim))
    ax.set_proj_type("ortho")
    ax.set_box_aspect((1, 1, 1), zoom=1.3)             # equal aspect: spheres look round
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    ax.set_title("12 spheres kissing Node Zero (cuboctahedron)")
    return ax.figure
