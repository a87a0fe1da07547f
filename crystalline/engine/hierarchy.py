"""The sphere tree: which thread is Node Zero, which are control spheres, which are workers.

    from crystalline.engine.hierarchy import Hierarchy
    h = Hierarchy.for_workers(63)      # Node Zero + 12 controls + 63 workers = 76 spheres
    h = Hierarchy.full(levels=3)       # 1 + 12 + 144 = 157 spheres
    for s in h.levels_deepest_first(): ...   # the reduction schedule, Node Zero last
    new_workers = h.spawn(h.workers[5], 3); h.collapse(new_workers[0].parent)

Fan-out is at most 12 at every level. Worker i of N sits in top-level group i % 12. After
spawn/collapse, ids are renumbered breadth-first and workers keep their relative order: a
spawning worker's slot is taken by its k new children, a collapsed control's children give up
their slots to the one new worker (at the first child's slot). for_workers numbering is the
starting order, so spawn followed by collapse restores every worker_index.
"""

from __future__ import annotations

from collections import Counter

from crystalline import config
from crystalline.errors import ConfigError

FAN_OUT = 12  # children per sphere at most: 12 spheres kiss one central sphere


class Sphere:
    """One thread of the tree; `Hierarchy` keeps the derived fields (id, level, group) current."""

    __slots__ = ("id", "role", "level", "position", "group", "parent", "children", "worker_index")

    def __init__(self, role: str, parent: Sphere | None = None, position: int = 0):
        self.role = role                        # "control" | "worker"
        self.parent = parent
        self.position = position                # 0..11 among its siblings; Node Zero 0
        self.children: list[Sphere] = []
        self.id = self.level = self.group = self.worker_index = -1   # set by Hierarchy._renumber

    @property
    def is_node_zero(self) -> bool:
        return self.parent is None

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"

    @property
    def role_name(self) -> str:
        """"node_zero", "control" or "worker": the name stats, telemetry and views use."""
        return "node_zero" if self.is_node_zero else self.role

    def __repr__(self):
        extra = f", worker_index={self.worker_index}" if self.is_worker else ""
        name = "node zero" if self.is_node_zero else self.role
        return (f"Sphere(id={self.id}, {name}, level={self.level}, position={self.position}, "
                f"group={self.group}{extra})")


def _check_int(name: str, value, low: int, high: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} = {value!r} is invalid: {fix}")
    return value


class Hierarchy:
    """A tree of spheres rooted at Node Zero. Build it with for_workers(N) or full(levels)."""

    def __init__(self, node_zero: Sphere):
        """Adopt a tree of Spheres; workers are numbered by any worker_index they carry, then
        breadth-first. Prefer the for_workers / full constructors."""
        self.node_zero = node_zero
        self._renumber()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def for_workers(cls, n_workers: int) -> Hierarchy:
        """The lazy tree for N workers: N <= 12 under Node Zero, else 12 controls per level."""
        _check_int("n_workers", n_workers, 1, config.MAX_WORKERS,
                   f"use 1 <= n_workers <= config.MAX_WORKERS = {config.MAX_WORKERS}")
        node_zero = Sphere("control")

        def build(parent: Sphere, indices: list[int]):
            if len(indices) <= FAN_OUT:        # they fit: workers directly under `parent`
                for pos, i in enumerate(indices):
                    worker = Sphere("worker", parent, pos)
                    worker.worker_index = i
                    parent.children.append(worker)
            else:                              # 12 controls, round-robin: child c gets i = c mod 12
                for c in range(FAN_OUT):
                    control = Sphere("control", parent, c)
                    parent.children.append(control)
                    build(control, indices[c::FAN_OUT])

        build(node_zero, list(range(n_workers)))
        return cls(node_zero)

    @classmethod
    def full(cls, levels: int = 3) -> Hierarchy:
        """The full lattice with `levels` levels counting Node Zero's: levels=3 is 1 + 12 + 144."""
        max_levels = 1
        while FAN_OUT ** max_levels <= config.MAX_WORKERS:
            max_levels += 1
        _check_int("levels", levels, 2, max_levels,
                   f"use 2 <= levels <= {max_levels} (levels=2 is Node Zero + 12 workers; "
                   "12**(levels-1) workers must not exceed "
                   f"config.MAX_WORKERS = {config.MAX_WORKERS})")
        return cls.for_workers(FAN_OUT ** (levels - 1))

    # ---- role duality ---------------------------------------------------------------------
    def spawn(self, sphere: Sphere, k: int) -> list[Sphere]:
        """Turn worker `sphere` into a control sphere with k new workers; returns them."""
        self._check_member(sphere)
        if not sphere.is_worker:
            raise ConfigError(f"cannot spawn from {sphere}: it is already a control sphere; "
                              "spawn from one of the workers (h.workers)")
        _check_int("k", k, 1, FAN_OUT,
                   f"a sphere has 1 to {FAN_OUT} children; use 1 <= k <= {FAN_OUT}")
        total = len(self.workers) - 1 + k
        if total > config.MAX_WORKERS:
            raise ConfigError(f"spawning {k} children would give {total} workers, more than "
                              f"config.MAX_WORKERS = {config.MAX_WORKERS}; spawn fewer")
        slot = sphere.worker_index
        sphere.role = "control"
        sphere.children = [Sphere("worker", sphere, pos) for pos in range(k)]
        for child in sphere.children:          # they share the slot; the stable sort keeps
            child.worker_index = slot          # them in position order
        self._renumber()
        return list(sphere.children)

    def collapse(self, sphere: Sphere) -> Sphere:
        """Turn a control sphere whose children are all workers back into a worker; returns it."""
        self._check_member(sphere)
        if sphere.is_node_zero:
            raise ConfigError("cannot collapse Node Zero: it never processes batches; "
                              "collapse one of its control children, or build a smaller "
                              "Hierarchy.for_workers(N)")
        if sphere.is_worker:
            raise ConfigError(f"cannot collapse {sphere}: it is already a worker; "
                              "collapse its parent or another control sphere")
        if any(not c.is_worker for c in sphere.children):
            raise ConfigError(f"cannot collapse {sphere}: some of its children are control "
                              "spheres; collapse those (deepest first) before it")
        slot = min(c.worker_index for c in sphere.children)
        sphere.role, sphere.children, sphere.worker_index = "worker", [], slot
        self._renumber()
        return sphere

    def _check_member(self, sphere):
        if not isinstance(sphere, Sphere) or not (0 <= sphere.id < len(self.spheres)) \
                or self.spheres[sphere.id] is not sphere:
            raise ConfigError(f"{sphere!r} is not a sphere of this hierarchy; "
                              "pass one of h.spheres")

    def _renumber(self):
        """Breadth-first ids, levels and groups; worker_index = rank of the old worker_index
        (ties, i.e. freshly spawned siblings or unnumbered workers, in breadth-first order)."""
        spheres, queue = [], [self.node_zero]
        while queue:
            s = queue.pop(0)
            s.id = len(spheres)
            s.level = 0 if s.parent is None else s.parent.level + 1
            s.group = -1 if s.parent is None else (s.position if s.level == 1 else s.parent.group)
            spheres.append(s)
            queue.extend(sorted(s.children, key=lambda c: c.position))
        workers = sorted((s for s in spheres if s.is_worker), key=lambda w: w.worker_index)
        for i, w in enumerate(workers):
            w.worker_index = i
        for s in spheres:
            if not s.is_worker:
                s.worker_index = -1
        self.spheres = spheres
        self.workers = workers
        self.controls = [s for s in spheres if not s.is_worker]

    # ---- views ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self.spheres[-1].level

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    def levels_deepest_first(self) -> list[list[Sphere]]:
        """Control spheres by level, deepest first, [Node Zero] last: the reduction order."""
        by_level: dict[int, list[Sphere]] = {}
        for s in self.controls:
            by_level.setdefault(s.level, []).append(s)
        return [by_level[level] for level in sorted(by_level, reverse=True)]

    def to_networkx(self, node_data: dict | None = None):
        """nx.DiGraph, edges parent -> child, node key = sphere id.

        Node attributes: role, level, group, position, worker_index, label, plus the entries of
        node_data[id] (e.g. live stats: {"tokens_per_s": ..., "bytes": ...}) where given.
        """
        import networkx as nx
        g = nx.DiGraph()
        for s in self.spheres:
            g.add_node(s.id, role=s.role, level=s.level, group=s.group, position=s.position,
                       worker_index=s.worker_index, label=self.label(s),
                       **(node_data or {}).get(s.id, {}))
            if s.parent is not None:
                g.add_edge(s.parent.id, s.id)
        return g

    @staticmethod
    def label(s: Sphere) -> str:
        """Short name: "N0" for Node Zero, "c<id>" for controls, "w<worker_index>" for workers."""
        return "N0" if s.is_node_zero else (f"w{s.worker_index}" if s.is_worker else f"c{s.id}")

    def describe(self) -> str:
        """A few lines: totals, spheres per level and role, workers per top-level group."""
        lines = [f"{len(self)} spheres: {len(self.controls)} control (incl. Node Zero), "
                 f"{len(self.workers)} worker; depth {self.depth}"]
        per_level = Counter((s.level, s.role) for s in self.spheres)
        for level in range(self.depth + 1):
            parts = [f"{per_level[level, role]} {role}" for role in ("control", "worker")
                     if per_level[level, role]]
            note = " (Node Zero)" if level == 0 else ""
            lines.append(f"  level {level}: " + ", ".join(parts) + note)
        groups = Counter(w.group for w in self.workers)
        lines.append("  workers per group: " + " ".join(f"{g}:{groups[g]}" for g in sorted(groups)))
        return "\n".join(lines)

    def __len__(self):
        return len(self.spheres)

    def __iter__(self):
        return iter(self.spheres)

    def __repr__(self):
        return f"Hierarchy(workers={len(self.workers)}, spheres={len(self)}, depth={self.depth})"
