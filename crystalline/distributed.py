"""MPI ranks: each rank runs its own sphere tree; the rank-level Node Zeros all-reduce and step together.

    mpiexec -n 2 python -m mpi4py -m crystalline train --distributed --preset tiny --workers 1

    from crystalline.distributed import DistributedTrainer     # in a script run by mpiexec
    tr = DistributedTrainer(model_cfg, train_cfg, corpus, workers=1)    # comm=MPI.COMM_WORLD
    tr.run(100)                  # progress bar on rank 0 only
    tr.save(path)                # rank 0 writes; the other ranks return at once
    g = tr.to_networkx()         # collective: cluster -> one node per rank -> each rank's tree
                                 # (drawn by crystalline.viz.cluster.draw_distributed)

Rank r of R computes a contiguous slice of every global batch (the first B % R ranks take one
sequence more) and splits it over its own workers by the ordinary tree. After its tree's
reduction, Node Zero all-reduces the reduced gradient (float32, in place) and the loss sum with
the other ranks, then applies the same AdamW step: one step on R ranks equals one step of one
thread on the same global batch, to float32 summation-order tolerance (2 ranks x 1 worker
equal 1 process x 2 workers bitwise: a + b has one order). Rank 0's parameters and AdamW state are broadcast at start and
after loading; every `check_every` steps the ranks compare CRC-32s of parameters and moments and
raise TrainingError, naming the ranks, if any has drifted.

Failure: every collective first waits at a non-blocking barrier with a deadline (`timeout`
seconds), so a rank that died or hung ends the others with a TrainingError instead of a hang.
Stopping (Ctrl-C, SIGTERM, stop(), interrupt() on any rank) is decided by all ranks together:
a rank that is asked to stop finishes its share of the step in flight, and the barrier before
each all-reduce is a non-blocking all-reduce of the ranks' stop flags, so every rank abandons
the same step before its update (or completes it) and ends run() at the same step.
After such an error the communicator is unusable: end the job. Run scripts under
`python -m mpi4py` (an uncaught exception on any rank calls MPI_Abort and mpiexec ends every
rank); the CLI's --distributed does the same through `abort_on_error`.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

from crystalline.engine.hierarchy import Hierarchy
from crystalline.engine.reduce import split_batch, split_by_group
from crystalline.engine.trainer import Trainer, TrainingStopped
from crystalline.errors import ConfigError, CrystallineError, TrainingError

DEFAULT_TIMEOUT_S = 300.0   # longest wait for the other ranks at any collective (a slow step included)
DEFAULT_CHECK_EVERY = 50    # steps between parameter checksum comparisons; 0 disables
SPIN_S = 1e-3               # poll without sleeping this long before backing off
MAX_SLEEP_S = 2e-4          # the longest sleep between polls once backed off
SAVED_TAG = 7101            # point-to-point tag: "rank 0 has written the checkpoint"


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ConfigError(f"distributed training needs mpi4py and an MPI library ({e}); install them "
                          "with pip install -e '.[mpi]' (mpi4py and the mpich wheel)") from None
    return MPI


def rank_slices(batch_size: int, ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, count) of each rank's share of a global batch; the first B % R ranks take one more."""
    if ranks > batch_size:
        raise ConfigError(f"batch_size = {batch_size} is smaller than the {ranks} MPI ranks: every rank "
                          f"needs at least one sequence per step; use a batch size of at least {ranks} "
                          "(--batch-size) or fewer ranks (mpiexec -n)")
    return split_batch(batch_size, ranks)


def wait_for_ranks(comm, what: str, timeout: float, stopped=lambda: False) -> float:
    """Meet every rank of `comm` at a non-blocking barrier; TrainingError after `timeout` seconds.

    Polls (spinning for SPIN_S, then sleeping up to MAX_SLEEP_S) so a waiting rank neither blocks
    forever nor burns a core while a slower rank computes. Returns the seconds waited.
    """
    return _poll(comm, comm.Ibarrier().Test, what, timeout, stopped)


def _poll(comm, done, what: str, timeout: float, stopped=lambda: False) -> float:
    t0 = time.perf_counter()
    delay = 2e-5
    while not done():
        waited = time.perf_counter() - t0
        if stopped():
            raise TrainingStopped(f"stopped while rank {comm.rank} waited for the other ranks at {what}")
        if waited > timeout:
            raise TrainingError(
                f"rank {comm.rank} of {comm.size} waited {waited:.0f} s for the other ranks at {what}: "
                f"a rank died, hung or is far slower (timeout={timeout:g} s). The job cannot continue; "
                "end it (mpiexec ends every rank when one calls MPI_Abort) and resume from the last "
                "checkpoint")
        if waited > SPIN_S:
            time.sleep(delay)
            delay = min(2 * delay, MAX_SLEEP_S)
    return time.perf_counter() - t0


class DistributedTrainer(Trainer):
    """A Trainer whose global batch is split over the MPI ranks of `comm`; one model, R trees."""

    def __init__(self, model_cfg, train_cfg, corpus, workers=None, hierarchy=None, sync="lock_free",
                 cache_dir=None, tokenizer=None, comm=None, timeout: float = DEFAULT_TIMEOUT_S,
                 check_every: int = DEFAULT_CHECK_EVERY, run_dir=None):
        MPI = _mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.rank, self.comm.size
        if not timeout > 0:
            raise ConfigError(f"timeout = {timeout!r} is invalid: use a positive number of seconds")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ConfigError(f"check_every = {check_every!r} is invalid: use 0 (off) or a positive step count")
        self.timeout, self.check_every = float(timeout), check_every
        firsts, counts = rank_slices(train_cfg.batch_size, self.size)
        self._slice = int(firsts[self.rank]), int(counts[self.rank])
        self._comm_s = (0.0, 0.0)          # (waiting for the ranks, all-reduce) of the last combine
        self._loss_buf = np.zeros(1, dtype=np.float64)
        self._saved_notes: list = []       # rank 0's pending "checkpoint written" messages
        self._failed = False               # a step raised on this rank
        super().__init__(model_cfg, train_cfg, corpus, workers=workers, hierarchy=hierarchy, sync=sync,
                         cache_dir=cache_dir, tokenizer=tokenizer, run_dir=run_dir)
        self._check_same_run()
        self.sync_from_root()

    @property
    def is_root(self) -> bool:
        """True on rank 0: the rank that prints, writes metrics and checkpoints."""
        return self.rank == 0

    def _rank_of(self) -> tuple[int, int]:
        """Each rank writes its own telemetry file (telemetry-rank<r>.bin) in the shared run folder."""
        return self.rank, self.size

    # ------------------------------------------------------------------ collectives
    def _gate(self, what: str) -> float:
        """Meet every rank before a collective. Never abandoned before the deadline: a rank
        that left a barrier the others completed would leave them blocked in the collective."""
        return wait_for_ranks(self.comm, what, self.timeout)

    def _agree_to_stop(self, what: str) -> tuple[float, bool]:
        """Meet every rank before `what` and learn whether any rank was asked to stop (collective)."""
        MPI = _mpi()
        mine, anyone = np.array([int(self._interrupted)], np.int32), np.zeros(1, np.int32)
        request = self.comm.Iallreduce(mine, anyone, op=MPI.MAX)
        waited = _poll(self.comm, request.Test, what, self.timeout)
        return waited, bool(anyone[0])

    def _stop_before_step(self) -> bool:
        return False                      # the ranks decide together, in _combine

    def _next_request(self, stopping) -> tuple[dict | None, bool]:
        """Between steps (collective): rank 0's new control-file request for every rank to act
        on, and whether any rank was asked to stop (which ends a pause on every rank)."""
        mine = (self._control.poll() if self._control is not None else None,
                bool(stopping() or self._interrupted))
        every = self._allgather(mine, f"the control-file check before step {self.steps_done}")
        return every[0][0], any(stop for _, stop in every)

    def _abort_in_flight(self) -> None:
        pass                              # this rank's step must reach _combine, where all decide

    def _allgather(self, value, what: str) -> list:
        self._gate(what)
        return self.comm.allgather(value)

    def _check_same_run(self) -> None:
        """Every rank must train the same model on the same data; else a ConfigError on all ranks."""
        tokens = np.ascontiguousarray(self.corpus.tokens[: 1 << 20])
        mine = {"model": self.model_cfg.to_dict(), "train": self.train_cfg.to_dict(),
                "parameters": self.model.num_parameters, "tokenizer": self.corpus.tokenizer.name,
                "corpus tokens": len(self.corpus.tokens), "corpus crc32": zlib.crc32(tokens.view(np.uint8))}
        every = self._allgather(mine, "the start-up configuration check")
        for key in mine:
            differ = [r for r, d in enumerate(every) if d[key] != every[0][key]]
            if differ:
                raise ConfigError(f"MPI ranks {differ} disagree with rank 0 on the {key} "
                                  f"({every[differ[0]][key]!r} against {every[0][key]!r}); every rank "
                                  "must get the same config, corpus and tokenizer (and see the same files)")

    def sync_from_root(self) -> None:
        """Broadcast rank 0's parameters, AdamW moments and counters to every rank (collective)."""
        with self._step_lock:
            self._gate("the broadcast of rank 0's parameters")
            for array in (self.model.params, self.optimizer.m, self.optimizer.v):
                self.comm.Bcast(array, root=0)
            counters = (self.optimizer.t, self.steps_done, self.skipped_steps)
            self.optimizer.t, self.steps_done, self.skipped_steps = self.comm.bcast(counters, root=0)
            self.stats.step = self.steps_done

    def check_sync(self) -> None:
        """Compare checksums of every rank's parameters and AdamW state (collective).

        Raises TrainingError on every rank, naming the ranks that differ from rank 0.
        """
        with self._step_lock:
            arrays = (self.model.params, self.optimizer.m, self.optimizer.v)
            mine = (self.steps_done, self.optimizer.t) + tuple(zlib.crc32(a.view(np.uint8)) for a in arrays)
            param_sum = float(self.model.params.sum(dtype=np.float64))
            every = self._allgather((mine, param_sum), f"the checksum comparison after step {self.steps_done}")
        drifted = [r for r, (d, _) in enumerate(every) if d != every[0][0]]
        if drifted:
            lines = "; ".join(f"rank {r}: step {d[0]}, parameter crc32 {d[2]:08x}, sum {s:.9g}"
                              for r, (d, s) in enumerate(every))
            raise TrainingError(f"MPI ranks {drifted} have drifted from rank 0 (their parameters or AdamW "
                                f"state differ): {lines}. The ranks no longer train one model; resume "
                                "every rank from the last checkpoint")

    # ------------------------------------------------------------------ scale-out hooks
    def _sequences(self) -> tuple[int, int]:
        return self._slice

    def _combine(self, grad: np.ndarray | None, loss_sum: float) -> float:
        """Node Zero (train) or the caller (eval): sum the ranks' gradients in place and loss sums."""
        MPI = _mpi()
        what = (f"the gradient all-reduce of step {self.steps_done}" if grad is not None
                else "a validation loss all-reduce")
        waited, stop = self._agree_to_stop(what)
        if stop:
            raise TrainingStopped(f"stopped before {what}: a rank was asked to stop (Ctrl-C, SIGTERM or "
                                  "stop()); every rank abandons this step before its update")
        t0 = time.perf_counter()
        if grad is not None:
            assert grad.dtype == np.float32 and grad.flags.c_contiguous
            self.comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        self._loss_buf[0] = loss_sum
        self.comm.Allreduce(MPI.IN_PLACE, self._loss_buf, op=MPI.SUM)
        self._comm_s = (waited, time.perf_counter() - t0)
        return float(self._loss_buf[0])

    # ------------------------------------------------------------------ steps and persistence
    def step(self):
        try:
            result = super().step()
        except (KeyboardInterrupt, TrainingStopped):
            raise                            # every rank was interrupted: rank 0 will still save
        except BaseException:
            self._failed = True              # rank 0 may be stuck waiting for this rank: see save()
            raise
        waited, allreduce = self._comm_s
        result.timings.update(rank_wait=waited, allreduce=allreduce)
        self.history[-1].update(ranks=self.size, rank_wait_s=waited, allreduce_s=allreduce)
        if self.check_every and self.steps_done % self.check_every == 0:
            self.check_sync()
        return result

    def run(self, steps: int, progress: bool = True, **kw):
        """As Trainer.run; only rank 0 shows a progress bar. Every rank must call it."""
        return super().run(steps, progress=progress and self.is_root, **kw)

    def save(self, path) -> Path:
        """Rank 0 writes the checkpoint (the ranks are identical); every rank returns once it is written.

        Not a collective: rank 0 tells each other rank by a point-to-point message, so a rank that
        exits right after (Ctrl-C, then MPI_Abort) cannot end the job before the file is complete.
        """
        if self.is_root:
            path = super().save(path)
            self._saved_notes = [n for n in self._saved_notes if not n.Test()] + \
                [self.comm.isend(self.steps_done, dest=r, tag=SAVED_TAG) for r in range(1, self.size)]
            return path
        if self._failed:
            return Path(path)                # never wait on rank 0 after this rank's own failure
        note = self.comm.irecv(source=0, tag=SAVED_TAG)
        _poll(self.comm, lambda: note.test()[0], f"rank 0's checkpoint save ({path})", self.timeout)
        return Path(path)

    @classmethod
    def load(cls, path, corpus=None, workers=None, sync="lock_free", cache_dir=None, comm=None,
             timeout: float = DEFAULT_TIMEOUT_S, check_every: int = DEFAULT_CHECK_EVERY, run_dir=None):
        """Every rank reads `path` (a shared file system); rank 0's state is then broadcast.

        A checkpoint from a 1-process run resumes on R ranks and vice versa (Trainer.load).
        """
        from crystalline.checkpoint import load_trainer

        def build(*args, **kw):
            return cls(*args, comm=comm, timeout=timeout, check_every=check_every, **kw)
        trainer = load_trainer(build, path, corpus=corpus, workers=workers, sync=sync, cache_dir=cache_dir,
                               run_dir=run_dir)
        trainer.sync_from_root()
        trainer.check_sync()
        return trainer

    # ------------------------------------------------------------------ the cluster's hierarchy
    def to_networkx(self, node_data: bool = True):
        """The cluster's sphere graph (see distributed_graph); collective, every rank gets it."""
        snap = self.stats.snapshot() if node_data else None
        data = None if snap is None else {int(i): {"tokens_per_s": float(snap["tokens_per_s"][i]),
                                                   "bytes": float(snap["bytes"][i])}
                                          for i in snap["sphere_id"]}
        mine = (_tree_shape(self.hierarchy), data)
        every = self._allgather(mine, "the hierarchy gather")
        return distributed_graph([s for s, _ in every], batch_size=self.train_cfg.batch_size,
                                 node_data=[d for _, d in every] if node_data else None)

    def __repr__(self) -> str:
        return (f"DistributedTrainer(rank {self.rank} of {self.size}, sequences "
                f"{self._slice[0]}..{sum(self._slice) - 1} of {self.train_cfg.batch_size}, "
                f"{self.model.num_parameters:,} parameters, {self.workers} workers here, step {self.steps_done})")


# ---------------------------------------------------------------------- graph of the cluster
def _tree_shape(h: Hierarchy) -> list[tuple[int, str, int, int]]:
    """A picklable description of a hierarchy: (parent id, role, position, worker_index) by id."""
    return [(-1 if s.parent is None else s.parent.id, s.role, s.position, s.worker_index) for s in h.spheres]


def _from_shape(shape) -> Hierarchy:
    from crystalline.engine.hierarchy import Sphere
    spheres = []
    for parent, role, position, worker_index in shape:
        s = Sphere(role, None if parent < 0 else spheres[parent], position)
        s.worker_index = worker_index
        if parent >= 0:
            spheres[parent].children.append(s)
        spheres.append(s)
    return Hierarchy(spheres[0])


def distributed_graph(ranks, batch_size: int | None = None, node_data: list | None = None):
    """nx.DiGraph of a cluster: "cluster" -> "r<k>" (one node per rank) -> that rank's tree.

    ranks: per rank, a worker count (the for_workers shape), a Hierarchy, or a gathered shape.
    Sphere nodes are "r<k>:<id>" with the Hierarchy.to_networkx attributes (role, level, group,
    position, worker_index, label) plus rank, depth (cluster 0, rank 1, Node Zero 2, ...) and
    global_worker (workers numbered across ranks in batch order). With batch_size, ranks and
    workers carry `sequences` = (first, count) of each global batch. node_data[k][id] adds
    attributes (e.g. live stats) to rank k's spheres.
    """
    import networkx as nx
    trees = [h if isinstance(h, Hierarchy) else
             Hierarchy.for_workers(int(h)) if isinstance(h, (int, np.integer)) else _from_shape(h)
             for h in ranks]
    if not trees:
        raise ConfigError("distributed_graph needs at least one rank")
    slices = rank_slices(batch_size, len(trees)) if batch_size is not None else None
    g = nx.DiGraph()
    g.add_node("cluster", role="cluster", depth=0, rank=-1, label=f"{len(trees)} ranks", level=-2,
               group=-1, position=0, worker_index=-1)
    first_worker = 0
    for k, h in enumerate(trees):
        rank_node = f"r{k}"
        attrs = {"role": "rank", "depth": 1, "rank": k, "label": f"R{k}", "level": -1, "group": -1,
                 "position": k, "worker_index": -1, "workers": len(h.workers)}
        if slices is not None:
            attrs["sequences"] = (int(slices[0][k]), int(slices[1][k]))
            starts, counts = split_by_group(attrs["sequences"][1], [w.group for w in h.workers])
            starts += attrs["sequences"][0]
        g.add_node(rank_node, **attrs)
        g.add_edge("cluster", rank_node)
        local = h.to_networkx(node_data[k] if node_data else None)
        for sid, a in local.nodes(data=True):
            a = dict(a, rank=k, depth=a["level"] + 2, label=f"r{k}:{a['label']}",
                     role=h.spheres[sid].role_name,
                     global_worker=first_worker + a["worker_index"] if a["worker_index"] >= 0 else -1)
            if slices is not None and a["worker_index"] >= 0:
                a["sequences"] = (int(starts[a["worker_index"]]), int(counts[a["worker_index"]]))
            g.add_node(f"r{k}:{sid}", **a)
        g.add_edges_from((f"r{k}:{u}", f"r{k}:{v}") for u, v in local.edges)
        g.add_edge(rank_node, f"r{k}:{h.node_zero.id}")
        first_worker += len(h.workers)
    return g


# ---------------------------------------------------------------------- CLI and scripts
@contextlib.contextmanager
def abort_on_error(comm=None):
    """Any exception on one rank of a multi-rank job ends every rank (MPI_Abort) instead of a hang.

    The error is printed with the rank first; exit code 2 for a CrystallineError, 128 + signal for
    a signal outside training (crystalline.signals.Interrupted), else 1. With one rank, or before
    MPI started, the exception propagates unchanged. (Training itself never raises on a signal:
    the ranks agree to stop, see DistributedTrainer._agree_to_stop.)
    """
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:   # noqa: BLE001 - reported, then the job ends
        MPI = sys.modules.get("mpi4py.MPI")
        if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
            raise                            # interrupted before MPI started: nothing to end
        comm = comm if comm is not None else MPI.COMM_WORLD
        if comm.size == 1:
            raise
        if isinstance(exc, KeyboardInterrupt):   # a signal outside training: nothing to save
            code = 128 + getattr(exc, "signum", 2)
            print(f"crystalline: rank {comm.rank} of {comm.size} interrupted ({exc or 'SIGINT'}) outside "
                  "training; nothing to save", file=sys.stderr)
        elif isinstance(exc, CrystallineError):
            code = 2
            print(f"crystalline: error: rank {comm.rank} of {comm.size}: {exc}", file=sys.stderr)
        else:
            code = 1
            print(f"crystalline: rank {comm.rank} of {comm.size} raised:", file=sys.stderr)
            traceback.print_exc()
        print(f"crystalline: rank {comm.rank} ends all {comm.size} ranks (MPI_Abort)", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        _wait_until_read((sys.stdout, sys.stderr))
        comm.Abort(code)


def _wait_until_read(streams, deadline_s: float = 2.0) -> None:
    """Wait (at most deadline_s) until mpiexec's proxy has read what this rank printed.

    MPI_Abort makes mpiexec kill every rank; bytes still in a rank's stdout/stderr pipe at that
    moment are lost (1 job in 10 lost the error message). FIONREAD says how many bytes a pipe
    still holds; a stream that is not a pipe or socket (a file, a terminal) is never waited for.
    """
    import fcntl
    import os
    import stat
    import struct
    import termios
    end = time.monotonic() + deadline_s
    for stream in streams:
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                continue
            while time.monotonic() < end and struct.unpack(
                    "i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0:
                time.sleep(0.001)
        except (AttributeError, OSError, ValueError):
            continue                         # no file descriptor: nothing to wait for
