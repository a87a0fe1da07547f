"""The sphere tree: shapes from a worker count, invariants, spawn/collapse, errors."""

import pytest

from crystalline import config
from crystalline.engine.hierarchy import FAN_OUT, Hierarchy, Sphere
from crystalline.errors import ConfigError


def check_invariants(h: Hierarchy):
    """What every hierarchy, however it was reached, must satisfy."""
    assert [s.id for s in h.spheres] == list(range(len(h)))
    assert h.node_zero is h.spheres[0] and h.node_zero.is_node_zero
    assert h.node_zero.level == 0 and h.node_zero.group == -1 and h.node_zero.role == "control"
    assert [w.worker_index for w in h.workers] == list(range(len(h.workers)))
    assert len(h.workers) + len(h.controls) == len(h)
    levels = [s.level for s in h.spheres]
    assert levels == sorted(levels)                        # breadth-first ids
    for s in h.spheres:
        assert len(s.children) <= FAN_OUT
        assert sorted(c.position for c in s.children) == list(range(len(s.children)))
        for c in s.children:
            assert c.parent is s and c.level == s.level + 1 and c.id > s.id
        if s.role == "control":
            assert s.children, f"{s} is a control without children"
            assert s.worker_index == -1
        else:
            assert s.role == "worker" and not s.children and s.worker_index >= 0
        if s.level == 1:
            assert s.group == s.position
        elif s.level > 1:
            assert s.group == s.parent.group
            assert s in s.parent.children
    assert h.depth == max(levels)


@pytest.mark.parametrize("n, spheres, depth", [
    (1, 2, 1), (2, 3, 1), (3, 4, 1), (12, 13, 1),
    (13, 1 + 12 + 13, 2), (63, 1 + 12 + 63, 2), (144, 157, 2),
    (145, 1 + 12 + 12 + 145, 3),               # group 0 holds 13 workers: one more level there
    (1728, 1 + 12 + 144 + 1728, 3),
])
def test_for_workers_shape(n, spheres, depth):
    h = Hierarchy.for_workers(n)
    check_invariants(h)
    assert len(h) == spheres and h.depth == depth and len(h.workers) == n == h.n_workers
    for i, w in enumerate(h.workers):
        assert w.group == i % 12, f"worker {i} of {n} is in group {w.group}"


def test_small_n_workers_hang_from_node_zero():
    h = Hierarchy.for_workers(5)
    assert [c.worker_index for c in h.node_zero.children] == [0, 1, 2, 3, 4]
    assert [c.position for c in h.node_zero.children] == [0, 1, 2, 3, 4]
    assert h.controls == [h.node_zero]


def test_63_workers():
    h = Hierarchy.for_workers(63)
    level1 = h.node_zero.children
    assert len(level1) == 12 and all(c.role == "control" for c in level1)
    assert [len(c.children) for c in level1] == [6, 6, 6] + [5] * 9
    assert [w.worker_index for w in level1[2].children] == [2, 14, 26, 38, 50, 62]
    assert [s.id for s in level1] == list(range(1, 13))


def test_every_n_round_robin():
    for n in range(1, 300):
        h = Hierarchy.for_workers(n)
        assert [w.group for w in h.workers] == [i % 12 for i in range(n)]
        assert all(len(s.children) <= 12 for s in h.spheres)
        assert all(s.children for s in h.controls)


def test_full_lattice():
    h = Hierarchy.full(levels=3)
    check_invariants(h)
    assert (len(h), len(h.workers), len(h.controls), h.depth) == (157, 144, 13, 2)
    assert all(len(c.children) == 12 for c in h.controls)
    assert len(Hierarchy.full(levels=2)) == 13
    assert len(Hierarchy.full(levels=4)) == 1 + 12 + 144 + 1728
    assert len(Hierarchy.full()) == 157


def test_levels_deepest_first():
    h = Hierarchy.for_workers(145)
    schedule = h.levels_deepest_first()
    assert [{s.level for s in level} for level in schedule] == [{2}, {1}, {0}]
    assert schedule[-1] == [h.node_zero]
    assert all(s.role == "control" for level in schedule for s in level)
    assert sum(len(level) for level in schedule) == len(h.controls)
    assert [s.id for s in schedule[0]] == sorted(s.id for s in schedule[0])
    # every control is reduced after all of its control children
    done = set()
    for level in schedule:
        for s in level:
            assert all(c.id in done for c in s.children if c.role == "control")
        done.update(s.id for s in level)
    small = Hierarchy.for_workers(4)
    assert small.levels_deepest_first() == [[small.node_zero]]


def test_spawn_and_collapse_round_trip():
    h = Hierarchy.for_workers(63)
    target = h.workers[5]                             # group 5, under control 6
    new = h.spawn(target, 3)
    check_invariants(h)
    assert target.role == "control" and target.worker_index == -1 and target.level == 2
    assert len(h.workers) == 65 and len(h) == 76 + 3 and h.depth == 3
    assert [w.worker_index for w in new] == [5, 6, 7]      # take the spawning worker's slot
    assert [w.position for w in new] == [0, 1, 2]
    assert all(w.group == 5 and w.parent is target and w.level == 3 for w in new)
    assert h.workers[8].group == 6                    # old worker 6 moved up by k - 1 = 2
    assert h.spheres[-3:] == new                      # deepest, so last in breadth-first ids
    back = h.collapse(target)
    check_invariants(h)
    assert back is target and target.role == "worker" and target.worker_index == 5
    fresh = Hierarchy.for_workers(63)
    assert [(s.id, s.role, s.level, s.group, s.position, s.worker_index) for s in h] == \
           [(s.id, s.role, s.level, s.group, s.position, s.worker_index) for s in fresh]


def test_spawn_from_level_one_worker_and_nested():
    h = Hierarchy.for_workers(3)
    new = h.spawn(h.workers[1], 12)
    check_invariants(h)
    assert len(h.workers) == 14 and h.depth == 2
    assert [w.group for w in h.workers] == [0] + [1] * 12 + [2]
    deeper = h.spawn(new[0], 1)
    check_invariants(h)
    assert h.depth == 3 and deeper[0].group == 1 and deeper[0].worker_index == 1
    with pytest.raises(ConfigError, match="children are control"):
        h.collapse(new[0].parent)
    h.collapse(deeper[0].parent)
    h.collapse(new[0].parent)
    check_invariants(h)
    assert len(h) == 4 and [w.group for w in h.workers] == [0, 1, 2]


def test_collapse_level_one_control():
    h = Hierarchy.for_workers(20)
    control = h.node_zero.children[3]                 # holds workers 3 and 15
    h.collapse(control)
    check_invariants(h)
    assert control.role == "worker" and control.level == 1 and control.group == 3
    assert control.worker_index == 3 and len(h.workers) == 19
    assert h.workers[15].group == 4                   # old worker 16 shifts down by one


def test_spawn_collapse_errors():
    h = Hierarchy.for_workers(13)
    with pytest.raises(ConfigError, match="already a control sphere.*spawn from one of the workers"):
        h.spawn(h.controls[1], 2)
    for k in (0, 13, -1, 2.0, True):
        with pytest.raises(ConfigError, match="1 <= k <= 12"):
            h.spawn(h.workers[0], k)
    with pytest.raises(ConfigError, match="cannot collapse Node Zero"):
        h.collapse(h.node_zero)
    with pytest.raises(ConfigError, match="already a worker"):
        h.collapse(h.workers[0])
    deep = Hierarchy.for_workers(145)
    with pytest.raises(ConfigError, match="children are control spheres; collapse those"):
        deep.collapse(deep.node_zero.children[0])    # group 0 has 13 workers under 12 controls
    with pytest.raises(ConfigError, match="not a sphere of this hierarchy"):
        h.spawn(Hierarchy.for_workers(13).workers[0], 2)
    with pytest.raises(ConfigError, match="not a sphere of this hierarchy"):
        h.collapse(Sphere("control"))
    big = Hierarchy.for_workers(config.MAX_WORKERS)
    with pytest.raises(ConfigError, match="MAX_WORKERS"):
        big.spawn(big.workers[0], 2)
    assert len(h) == 26 and len(big.workers) == config.MAX_WORKERS    # failures change nothing
    check_invariants(h)


@pytest.mark.parametrize("n", [0, -3, config.MAX_WORKERS + 1, 2.5, "8", None, True])
def test_for_workers_rejects(n):
    with pytest.raises(ConfigError, match=r"n_workers .* use 1 <= n_workers <= config.MAX_WORKERS"):
        Hierarchy.for_workers(n)


@pytest.mark.parametrize("levels", [0, 1, 5, 3.0])
def test_full_rejects(levels):
    with pytest.raises(ConfigError, match=r"use 2 <= levels <= 4"):
        Hierarchy.full(levels)


def test_to_networkx():
    h = Hierarchy.for_workers(63)
    g = h.to_networkx(node_data={0: {"tokens_per_s": 0.0}, 20: {"tokens_per_s": 123.0}})
    assert g.number_of_nodes() == 76 and g.number_of_edges() == 75
    assert all(g.in_degree(s.id) == (0 if s.is_node_zero else 1) for s in h)
    assert set(g.edges) == {(s.parent.id, s.id) for s in h if s.parent is not None}
    w = h.workers[13]
    assert g.nodes[w.id] == {"role": "worker", "level": 2, "group": 1, "position": 1,
                             "worker_index": 13, "label": "w13", "tokens_per_s": 123.0}
    assert g.nodes[0]["label"] == "N0" and g.nodes[0]["group"] == -1
    assert g.nodes[5]["label"] == "c5" and g.nodes[5]["role"] == "control"
    import networkx as nx
    assert nx.is_arborescence(g)


def test_describe_and_dunders():
    h = Hierarchy.for_workers(63)
    text = h.describe()
    assert "76 spheres" in text and "level 2: 63 worker" in text and "0:6" in text and "11:5" in text
    assert repr(h) == "Hierarchy(workers=63, spheres=76, depth=2)"
    assert len(h) == 76 and list(h) == h.spheres
    assert "worker_index=13" in repr(h.workers[13]) and "node zero" in repr(h.node_zero)


def test_lazy_export():
    import crystalline
    assert crystalline.Hierarchy is Hierarchy
