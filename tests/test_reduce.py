"""The batch split and the reduction plan against what the README says, computed here: contiguous
micro-batches, equal load per symmetry group, and a plan that, applied deepest level first, leaves
at Node Zero's row the sum of every busy worker's row (each added exactly once), with idle
workers skipped and every target the first contributing child's row."""

import numpy as np
import pytest

from crystalline import Hierarchy
from crystalline.engine.reduce import reduce_rows, reduction_plan, split_batch, split_by_group


@pytest.mark.parametrize("B, n", [(24, 1), (24, 5), (7, 7), (5, 9), (252, 63), (1, 1)])
def test_split_batch_is_contiguous_and_the_first_take_one_more(B, n):
    starts, counts = split_batch(B, n)
    assert counts.tolist() == [B // n + (w < B % n) for w in range(n)]
    assert starts.tolist() == [sum(counts[:w]) for w in range(n)]
    assert starts.dtype == counts.dtype == np.int64


@pytest.mark.parametrize("B, n", [(24, 15), (252, 63), (64, 63), (24, 30), (10, 3), (36, 144)])
def test_split_by_group_deals_over_groups_first(B, n):
    groups = [w % 12 for w in range(n)]
    starts, counts = split_by_group(B, groups)
    assert counts.sum() == B
    assert starts.tolist() == [int(sum(counts[:w])) for w in range(n)]        # contiguous, in order
    present = sorted(set(groups))
    per_group = [int(counts[[w for w in range(n) if groups[w] == g]].sum()) for g in present]
    k = len(present)
    assert per_group == [B // k + (i < B % k) for i in range(k)]
    for g in present:                                  # within a group: the first take one more
        members = [int(counts[w]) for w in range(n) if groups[w] == g]
        share = sum(members)
        assert members == [share // len(members) + (i < share % len(members)) for i in range(len(members))]
    if B % 12 == 0 and n >= 12:
        assert len(set(per_group)) == 1


def test_split_by_group_with_uneven_groups():
    starts, counts = split_by_group(10, [0, 0, 0, 5])         # groups 0 and 5: 5 sequences each
    assert counts.tolist() == [2, 2, 1, 5] and starts.tolist() == [0, 2, 4, 5]


def apply_plan(hierarchy, plan, rows):
    """Apply the plan as the engine does: deepest level first, rows[target] += rows[s]."""
    rows = rows.copy()
    for level in hierarchy.levels_deepest_first():
        for control in level:
            target, sources = plan[control.id]
            for s in sources:
                rows[target] += rows[s]
    return rows


@pytest.mark.parametrize("n, B", [(1, 4), (5, 12), (13, 24), (15, 12), (63, 64), (144, 300), (30, 24),
                                  (25, 5), (13, 3)])
def test_reduction_plan_sums_every_busy_row_once_into_node_zeros_row(n, B):
    h = Hierarchy.for_workers(n)
    _, counts = split_by_group(B, [s.group for s in h.workers])
    plan, root = reduction_plan(h, counts)
    assert set(plan) == {s.id for s in h.spheres if not s.is_worker}
    rng = np.random.default_rng(n)
    rows = rng.normal(size=(n, 5))
    rows[counts == 0] = np.nan                         # an idle worker's row is never read
    summed = apply_plan(h, plan, rows)
    busy = np.flatnonzero(counts > 0)
    assert root == busy[0]
    np.testing.assert_allclose(summed[root], rows[busy].sum(0), rtol=1e-12)
    sources = [r for _, s in plan.values() for r in s]
    assert len(sources) == len(set(sources)) == len(busy) - 1      # each row added once
    for control in (s for s in h.spheres if not s.is_worker):
        target, sources = plan[control.id]
        child_rows = []
        for c in control.children:
            row = c.worker_index if c.is_worker and counts[c.worker_index] > 0 else \
                (plan[c.id][0] if not c.is_worker else -1)
            if row >= 0:
                child_rows.append(row)
        assert [target] + list(sources) == (child_rows or [-1]), control


def test_a_control_with_only_idle_workers_has_no_target():
    """25 workers, 5 sequences: groups 5-11 get none, so their controls contribute no row (-1)."""
    h = Hierarchy.for_workers(25)
    _, counts = split_by_group(5, [s.group for s in h.workers])
    plan, root = reduction_plan(h, counts)
    assert root == 0
    for control in (s for s in h.spheres if s.role == "control" and not s.is_node_zero):
        target, sources = plan[control.id]
        if control.group >= 5:
            assert (target, list(sources)) == (-1, []), control
        else:
            busy = [c.worker_index for c in control.children if counts[c.worker_index] > 0]
            assert [target, *sources] == busy, control
    assert plan[h.node_zero.id] == (0, [plan[c.id][0] for c in h.node_zero.children[1:5]])


def test_reduce_rows_adds_in_place_in_order():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 9000)).astype(np.float32)        # more than one 4096 chunk
    want = grads.copy()
    want[2] = ((grads[2] + grads[0]) + grads[3])
    reduce_rows(grads, 2, np.array([0, 3], np.int64))
    np.testing.assert_array_equal(grads[2], want[2])
    np.testing.assert_array_equal(grads[[0, 1, 3]], want[[0, 1, 3]])
