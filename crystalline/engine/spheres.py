"""The running sphere threads of one hierarchy: Point A, parallel compute, Point B, tree reduction.

    tree = SphereTree(hierarchy, model, (first, count), stats, update=fn, sync="lock_free",
                      balance="static", straggler_mode="sleep", dropout_seed=0)
    tree.slowdown[w] = 2.0                             # between steps: worker w twice as slow
    outcome = tree.run(Job("train", step, batches))    # called by the trainer, any thread
    tree.close()

One OS thread per sphere, started once and kept across steps. Node Zero's thread takes jobs
from a queue, hands each worker its micro-batch, meets everyone at Point A and Point B, waits
for its control children, adds their results and calls `update(grad, loss_sum)` (the
optimizer, given the summed gradient and the summed token losses of this tree's sequences).
It never runs forward or backward. Workers compute into their own workspace and their own row
of `grads`; controls reduce in place (see reduce.py). No lock is taken anywhere on the compute
path unless sync="model_lock", the predecessor's global lock kept as a baseline. With
balance="dynamic" workers take the step's chunks from a shared counter instead of computing a
fixed slice, and a slowed worker waits after each forward+backward (see balance.py). A training
forward draws its dropout masks by (dropout_seed, step, the global index of its first sequence),
so every tree shape draws the same masks (model/dropout.py).

Any exception in any sphere aborts both barriers, wakes every waiting control, and comes back
from `run` as the outcome's `failure`; `abort()` does the same from outside (stop). The
update is applied only if nothing aborted before it started, and then runs to its end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from crystalline.engine.balance import SharedChunks, live_rows, slow_down
from crystalline.engine.reduce import reduce_rows, reduction_plan, split_by_group
from crystalline.engine.stats import FIELD, PHASES
from crystalline.model.dropout import DropoutKey
from crystalline.model.layout import zeros

SYNC_MODES = ("lock_free", "model_lock")
THREAD_STACK_BYTES = 1 << 20


@dataclass
class Job:
    kind: str                  # "train" | "eval" | "exit"
    step: int = 0              # step index: selects the sequences (train) or the validation batch
    batches: object = None     # a data.batching.Batches to take the step's sequences from


@dataclass
class Outcome:
    loss_sum: float = float("nan")         # summed token losses of the tree's sequences
    update: object = None                  # what update(grad, loss_sum) returned (train jobs)
    timings: dict = field(default_factory=dict)
    failure: tuple | None = None           # (sphere, exception) if a sphere raised
    aborted: bool = False                  # stopped from outside before the update


class SphereTree:
    """Threads, barriers, workspaces and gradient segments for one hierarchy.

    sequences: (first, count): this tree computes sequences [first, first + count) of each
    step's global batch (all of it in one process; a rank's share under MPI).
    """

    def __init__(self, hierarchy, model, sequences: tuple[int, int], stats, update, sync: str,
                 balance: str, straggler_mode: str, dropout_seed: int):
        T = model.config.block_size
        first, count = sequences
        self.hierarchy, self.model, self.stats, self.update = hierarchy, model, stats, update
        self.dropout_seed = dropout_seed
        n_workers = len(hierarchy.workers)
        self.balance, self.straggler_mode = balance, straggler_mode
        self.slowdown = np.ones(n_workers)    # straggler factor per worker; set between steps
        self.abort_event = threading.Event()
        self.starts, self.counts = split_by_group(count, [s.group for s in hierarchy.workers])
        self.starts += first
        self.plan, self.root_row = reduction_plan(hierarchy, self.counts)
        self.plan = {cid: (target, np.array(sources, dtype=np.int64))
                     for cid, (target, sources) in self.plan.items()}
        # Each step's backward overwrites its worker's row; the layout's padding floats stay 0.
        # Rows of idle workers are never touched, so np.zeros costs them no memory.
        self.grads = zeros((n_workers, model.num_parameters))
        self.loss_sums = np.zeros(n_workers, dtype=np.float64)   # worker w writes entry w only
        if balance == "dynamic":
            self._init_dynamic(first, count)
        else:
            self.inputs = [np.empty((c, T), dtype=np.int32) for c in self.counts]
            self.targets = [np.empty((c, T), dtype=np.int32) for c in self.counts]
            self.workspaces = [model.workspace(int(c)) if c else None for c in self.counts]
        # The predecessor's global lock around forward + backward, or no lock at all.
        self.compute_lock = threading.Lock() if sync == "model_lock" else contextlib.nullcontext()

        n = len(hierarchy.spheres)
        self.barrier_a = threading.Barrier(n)
        self.b_releases = 0              # times every sphere reached Point B (its barrier's action)
        self.barrier_b = threading.Barrier(n, action=self._released_at_b)
        self.children_done = {c.id: threading.Semaphore(0) for c in hierarchy.controls}
        self.job = Job("exit")
        self.step_label = 0        # the step the current job's phase intervals belong to
        self.failure: tuple | None = None
        self.aborted = False
        self._fail_lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._outcomes: queue.Queue = queue.Queue()
        self._record_bytes()

        previous = threading.stack_size(THREAD_STACK_BYTES)
        try:
            self.threads = [threading.Thread(target=self._loop, args=(s,), daemon=True,
                                             name=f"sphere-{s.id}-{'node-zero' if s.is_node_zero else s.role}")
                            for s in hierarchy.spheres]
            for t in self.threads:
                t.start()
        finally:
            threading.stack_size(previous)

    # ----------------------------------------------------------------- caller side
    def run(self, job: Job, stall_after: float = float("inf"), on_stall=None) -> Outcome:
        """Run one job through the tree and wait for Node Zero's outcome.

        If it takes longer than `stall_after` seconds, `on_stall(self.stall_report(), seconds)`
        is called (from this thread, again every `stall_after` seconds) while waiting goes on.
        """
        if not self.alive:
            return Outcome(failure=self.failure, aborted=self.aborted)
        self._requests.put(job)
        started = time.perf_counter()
        while True:
            try:
                return self._outcomes.get(timeout=min(stall_after, 3600.0))
            except queue.Empty:
                if on_stall is not None:
                    on_stall(self.stall_report(), time.perf_counter() - started)

    def stall_report(self) -> list[dict]:
        """Spheres holding up the step: workers not yet at Point B, controls still reducing."""
        now, report = time.time(), []
        values = self.stats.values
        for s in self.hierarchy.spheres:
            phase = PHASES[int(values[s.id, FIELD["phase"]])]
            if phase in ("compute", "reduce", "update"):
                report.append({"sphere": s.id, "role": s.role_name,
                               "worker": s.worker_index, "group": s.group, "phase": phase,
                               "not_arrived_at": "B" if phase == "compute" else "the reduction's end",
                               "seconds": now - values[s.id, FIELD["phase_since"]]})
        return report

    @property
    def alive(self) -> bool:
        return not self.aborted and self.threads[0].is_alive()

    def abort(self) -> None:
        """Break both barriers and wake every waiting control: all threads leave promptly."""
        self.aborted = True
        self.abort_event.set()
        self.barrier_a.abort()
        self.barrier_b.abort()
        for sem in self.children_done.values():
            sem.release(len(self.hierarchy.spheres))

    def close(self) -> None:
        """Stop every thread and wait for it (an in-flight micro-batch finishes first)."""
        if not self.alive:
            self.abort()
        self._requests.put(None)          # a live Node Zero sends the exit job through Point A
        for t in self.threads:
            t.join()

    # ----------------------------------------------------------------- sphere side
    def _loop(self, sphere) -> None:
        try:
            if sphere.is_node_zero:
                self._node_zero_loop(sphere)
            elif sphere.role == "worker":
                self._worker_loop(sphere)
            else:
                self._control_loop(sphere)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:        # noqa: BLE001 - reported to the caller, never lost
            self._fail(sphere, exc)

    def _fail(self, sphere, exc: BaseException) -> None:
        with self._fail_lock:
            if self.failure is None:
                self.failure = (sphere, exc)
        self.abort()

    def _worker_loop(self, sphere) -> None:
        w, row, clock = sphere.worker_index, self.stats.row(sphere.id), self.stats.clock(sphere.id)
        work = self._work_dynamic if self.balance == "dynamic" else self._work_static
        while True:
            t0, t1, job = self._meet_at_a(clock)
            if job.kind == "exit":
                return
            clock.enter("compute")
            count, micro_batches = work(job, w, row)
            tokens = count * self.model.config.block_size
            t2 = time.perf_counter()
            # Counters are written before Point B, so they are complete when the step returns.
            if job.kind == "train":
                row[FIELD["micro_batches"]] += micro_batches
                row[FIELD["tokens"]] += tokens
            row[FIELD["loss"]] = self.loss_sums[w] / tokens if count else np.nan
            row[FIELD["compute_s"]] += t2 - t1
            row[FIELD["wait_a_s"]] += t1 - t0
            clock.enter("wait_b")
            self._pass_b()
            t3 = time.perf_counter()
            row[FIELD["wait_b_s"]] += t3 - t2
            row[FIELD["efficiency"]] = (t2 - t1) / (t3 - t1) if t3 > t1 else 1.0
            row[FIELD["last_tokens"]] = tokens
            row[FIELD["tokens_per_s"]] = tokens / (t3 - t0)
            row[FIELD["updated"]] = time.time()

    def _released_at_b(self) -> None:
        self.b_releases += 1

    def _pass_b(self) -> None:
        """Wait at Point B. A worker that every sphere reached B with has finished its step even
        if an abort (stop(), close()) breaks the barrier before this thread wakes: it returns
        and writes its counters; a barrier broken before the release still raises."""
        releases = self.b_releases
        try:
            self.barrier_b.wait()
        except threading.BrokenBarrierError:
            if self.b_releases == releases:
                raise

    def _meet_at_a(self, clock) -> tuple[float, float, Job]:
        """Wait at Point A; (arrival time, release time, the job Node Zero handed out)."""
        clock.enter("wait_a")
        t0 = time.perf_counter()
        self.barrier_a.wait()
        t1 = time.perf_counter()
        clock.step = self.step_label
        return t0, t1, self.job

    def _compute(self, job, ws, x, y, grad, accumulate: bool, first: int) -> float:
        """Forward (+ backward into grad, for training) of x -> y, sequences first, first + 1, ...
        of the global batch; the summed token loss."""
        if job.kind == "train" and self.model.config.dropout > 0:
            loss = self.model.forward_into(ws, x, y, dropout=DropoutKey(self.dropout_seed, job.step, first))
        else:                     # evaluation, or no dropout: the call is the plain forward
            loss = self.model.forward_into(ws, x, y)
        if job.kind == "train":
            self.model.backward_into(ws, grad, 1.0, accumulate=accumulate)
        return loss * x.size

    def _work_static(self, job, w, row) -> tuple[int, int]:
        """Worker w's fixed slice: (sequences computed, micro-batches)."""
        count = int(self.counts[w])
        row[FIELD["slowdown"]] = self.slowdown[w]
        if not count:
            return 0, 0
        t = time.perf_counter()
        with self.compute_lock:
            self.loss_sums[w] = self._compute(job, self.workspaces[w], self.inputs[w],
                                              self.targets[w], self.grads[w], accumulate=False,
                                              first=int(self.starts[w]))
        self._straggle(w, row, time.perf_counter() - t)
        return count, 1

    def _work_dynamic(self, job, w, row) -> tuple[int, int]:
        """Take chunks from the step's counter until none is left, accumulating into row w of
        grads (the first chunk overwrites it): (sequences computed, chunks taken)."""
        chunks, taken, ws, grad = self.chunks, self.assignment[w], self.workspaces[w], self.grads[w]
        row[FIELD["slowdown"]] = self.slowdown[w]
        taken.clear()
        loss_sum, count = 0.0, 0
        while not self.aborted and (k := chunks.take()) >= 0:
            lo, n = int(chunks.starts[k]) - self.first, int(chunks.sizes[k])
            t = time.perf_counter()
            with self.compute_lock:
                loss_sum += self._compute(job, ws, self.batch_x[lo:lo + n], self.batch_y[lo:lo + n],
                                          grad, accumulate=bool(taken), first=int(chunks.starts[k]))
            taken.append(k)
            count += n
            self._straggle(w, row, time.perf_counter() - t)
        self.loss_sums[w] = loss_sum
        self.took[w] = bool(taken)
        return count, len(taken)

    def _straggle(self, w, row, computed: float) -> None:
        """A slowed worker spends (factor - 1) x `computed` more seconds (sleeping or spinning)."""
        factor = self.slowdown[w]
        if factor > 1.0:
            row[FIELD["slowed_s"]] += slow_down((factor - 1.0) * computed, self.straggler_mode,
                                                self.abort_event)

    def _init_dynamic(self, first: int, count: int) -> None:
        """Dynamic balancing: one batch buffer, a chunk counter, every worker a workspace for the
        largest chunk and a gradient row; the reduction skips workers that took no chunk."""
        T, n_workers = self.model.config.block_size, len(self.hierarchy.workers)
        self.first, self.chunks = first, SharedChunks(first, count, n_workers)
        self.batch_x = np.empty((count, T), dtype=np.int32)
        self.batch_y = np.empty((count, T), dtype=np.int32)
        self.workspaces = [self.model.workspace(self.chunks.max_size) if self.chunks.max_size else None
                           for _ in range(n_workers)]
        self.counts = np.full(n_workers, self.chunks.max_size, dtype=np.int64)   # buffer capacity
        self.assignment = [[] for _ in range(n_workers)]     # chunks worker w took this step
        self.took = np.zeros(n_workers, dtype=bool)          # worker w writes entry w only
        self.result_rows = np.full(len(self.hierarchy.spheres), -1, dtype=np.int64)
        self.children_rows = {c.id: [(k.role == "worker", k.worker_index if k.role == "worker" else k.id)
                                     for k in c.children] for c in self.hierarchy.controls}

    @property
    def last_assignment(self) -> list[list[tuple[int, int]]]:
        """Per worker, the (first sequence, count) of each chunk it computed in the last step."""
        if self.balance != "dynamic":
            return [[(int(s), int(c))] if c else [] for s, c in zip(self.starts, self.counts)]
        return [[(int(self.chunks.starts[k]), int(self.chunks.sizes[k])) for k in taken]
                for taken in self.assignment]

    def _control_loop(self, sphere) -> None:
        row, done = self.stats.row(sphere.id), self.children_done[sphere.id]
        clock = self.stats.clock(sphere.id)
        parent_done = self.children_done[sphere.parent.id]
        n_control_children = sum(c.role == "control" for c in sphere.children)
        while True:
            t0, t1, job = self._meet_at_a(clock)
            if job.kind == "exit":
                return
            clock.enter("wait_b")
            self.barrier_b.wait()
            t2 = time.perf_counter()
            clock.enter("reduce")
            if job.kind == "train":
                if not self._reduce(sphere, done, n_control_children):
                    return
                parent_done.release()
            t3 = time.perf_counter()
            row[FIELD["wait_a_s"]] += t1 - t0
            row[FIELD["wait_b_s"]] += t2 - t1
            row[FIELD["reduce_s"]] += t3 - t2
            row[FIELD["updated"]] = time.time()

    def _reduce(self, sphere, done, n_control_children: int) -> bool:
        """Wait for the control children, then add the children's rows. False if aborted."""
        for _ in range(n_control_children):
            done.acquire()
        if self.aborted:
            return False
        if self.balance == "dynamic":
            rows = live_rows(self.children_rows[sphere.id], self.took, self.result_rows)
            target, sources = (rows[0] if rows else -1), np.array(rows[1:], dtype=np.int64)
            self.result_rows[sphere.id] = target
        else:
            target, sources = self.plan[sphere.id]
        if len(sources):
            reduce_rows(self.grads, target, sources)
        return True

    def _node_zero_loop(self, sphere) -> None:
        row, done = self.stats.row(sphere.id), self.children_done[sphere.id]
        n_control_children = sum(c.role == "control" for c in sphere.children)
        while True:
            job = self._requests.get()
            if job is None:
                if not self.aborted:
                    self.job = Job("exit")
                    self.barrier_a.wait()
                return
            try:
                outcome = self._node_zero_step(job, row, self.stats.clock(sphere.id), done,
                                               n_control_children)
            except threading.BrokenBarrierError:
                outcome = Outcome(failure=self.failure, aborted=self.aborted)
            except BaseException as exc:   # noqa: BLE001
                self._fail(sphere, exc)
                outcome = Outcome(failure=self.failure, aborted=True)
            self._outcomes.put(outcome)
            if outcome.failure is not None or outcome.aborted:
                return

    def _node_zero_step(self, job, row, clock, done, n_control_children) -> Outcome:
        # Validation passes are recorded under the training step they follow.
        clock.step = job.step if job.kind == "train" else self.stats.step - 1
        clock.enter("update")
        t0 = time.perf_counter()
        if self.balance == "dynamic":
            job.batches.fill(job.step, self.first, len(self.batch_x), self.batch_x, self.batch_y)
            self.chunks.reset()
        else:
            for w, (start, count) in enumerate(zip(self.starts, self.counts)):
                if count:
                    job.batches.fill(job.step, int(start), int(count), self.inputs[w], self.targets[w])
        self.job, self.step_label = job, clock.step
        t1 = time.perf_counter()
        clock.enter("wait_a")
        self.barrier_a.wait()
        t2 = time.perf_counter()
        clock.enter("wait_b")
        self.barrier_b.wait()
        t3 = time.perf_counter()
        clock.enter("reduce")
        loss_sum = float(self.loss_sums.sum())
        result = None
        if job.kind == "train":
            if not self._reduce(self.hierarchy.node_zero, done, n_control_children):
                return Outcome(failure=self.failure, aborted=True)
            root_row = self.result_rows[self.hierarchy.node_zero.id] if self.balance == "dynamic" else self.root_row
            grad = self.grads[root_row] if root_row >= 0 else np.zeros_like(self.model.params)
            t4 = time.perf_counter()
            if self.aborted:
                return Outcome(failure=self.failure, aborted=True)
            clock.enter("update")
            result = self.update(grad, loss_sum)
        else:
            t4 = t3
        t5 = time.perf_counter()
        clock.enter("idle")
        row[FIELD["wait_a_s"]] += t2 - t1
        row[FIELD["wait_b_s"]] += t3 - t2
        row[FIELD["reduce_s"]] += (t1 - t0) + (t5 - t3)
        row[FIELD["updated"]] = time.time()
        timings = {"hand_out": t1 - t0, "parallel": t3 - t1, "reduce": t4 - t3, "update": t5 - t4,
                   "total": t5 - t0}
        return Outcome(loss_sum=loss_sum, update=result, timings=timings)

    def _record_bytes(self) -> None:
        """Bytes each sphere owns: workers their workspace, segment and batch; Node Zero the rest."""
        for s in self.hierarchy.workers:
            w = s.worker_index
            owned = 0 if self.balance == "dynamic" else self.inputs[w].nbytes + self.targets[w].nbytes
            if self.counts[w]:
                owned += self.workspaces[w].nbytes + self.grads[w].nbytes
            self.stats.row(s.id)[FIELD["bytes"]] = owned
