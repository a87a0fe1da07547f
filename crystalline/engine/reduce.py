"""The global batch split over workers and groups, and the tree reduction plan over gradient
segments.

Gradients live in one `[n_workers, P]` float32 array, one row (segment) per worker. Control
spheres own no gradient buffer: each sums its children's results *in place into its first
contributing child's row*, in child order, so the order of additions is fixed and the result
bitwise reproducible. A worker given no sequence (more workers than sequences) contributes no
row, and its parent skips it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def split_batch(batch_size: int, n_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, counts) of each worker's micro-batch: sequences [start, start + count) of the step.

    The first `batch_size % n_workers` workers take one sequence more than the others.
    """
    counts = np.full(n_workers, batch_size // n_workers, dtype=np.int64)
    counts[: batch_size % n_workers] += 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return starts, counts


def split_by_group(batch_size: int, groups) -> tuple[np.ndarray, np.ndarray]:
    """(starts, counts) of each worker's micro-batch, dealt so the symmetry groups carry equal load.

    groups: (n_workers,) top-level group of each worker, by worker index. The batch is split
    over the groups that have workers (split_batch), then each group's share over its workers in
    index order; worker w computes sequences [start, start + count) of the step. When the number
    of groups divides the batch, every group gets the same tokens even where groups hold
    different numbers of workers (63 workers: groups of 6 and 5).
    """
    groups = np.asarray(groups)
    counts = np.zeros(len(groups), dtype=np.int64)
    present = np.unique(groups)
    _, shares = split_batch(batch_size, len(present))
    for group, share in zip(present, shares):
        members = np.flatnonzero(groups == group)
        counts[members] = split_batch(int(share), len(members))[1]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return starts, counts


def reduction_plan(hierarchy, counts: np.ndarray) -> tuple[dict[int, tuple[int, list[int]]], int]:
    """For each control sphere id: (target row, source rows to add into it, in order).

    Also returns the row that holds the whole tree's sum at Node Zero. A control whose
    subtree has no contributing worker gets target -1.
    """
    result_row: dict[int, int] = {}
    plan: dict[int, tuple[int, list[int]]] = {}
    for level in hierarchy.levels_deepest_first():
        for control in level:
            rows = []
            for child in control.children:
                row = child.worker_index if child.role == "worker" and counts[child.worker_index] > 0 \
                    else result_row.get(child.id, -1)
                if row >= 0:
                    rows.append(row)
            plan[control.id] = (rows[0], rows[1:]) if rows else (-1, [])
            result_row[control.id] = plan[control.id][0]
    return plan, result_row[hierarchy.node_zero.id]


@njit(nogil=True, cache=True)
def reduce_rows(grads, target, sources):
    """grads[target] += grads[s] for s in sources, in that order, one cache-sized chunk at a time.

    grads: (n_rows, P) float32; sources: (k,) int64. Never fastmath: the order is the contract.
    """
    P = grads.shape[1]
    chunk = 4096
    for lo in range(0, P, chunk):
        hi = min(lo + chunk, P)
        for s in sources:
            for j in range(lo, hi):
                grads[target, j] += grads[s, j]
