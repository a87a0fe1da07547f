"""The Trainer: a GPT, its data, a sphere tree running the steps, AdamW on Node Zero, live stats.

    tr = Trainer(model_cfg, train_cfg, "data/tinyshakespeare.txt", workers=63)
    tr.step()                        # one global step -> StepResult
    tr.run(200, progress=True)       # tqdm bar with loss, tokens/s and the slowest group
    tr.start(); tr.pause(); tr.resume(); tr.stop()    # background training for notebooks
    tr.resize(workers=12)            # between steps; parameters and AdamW state kept
    tr.set_stragglers({0: 2.0})      # between steps: worker 0 twice as slow (see balance.py)
    Trainer(..., balance="dynamic")  # workers take chunks of the step as they finish
    tr.stats.snapshot(); tr.history; tr.save(path); Trainer.load(path)
    tr.timeline(last=50)             # per-sphere phase intervals (compute, wait at A / B, ...)

Trainer(..., run_dir=path) also writes the stats and phase rings to a telemetry file in that
folder (crystalline.open_run reads it from any process) and acts on the folder's control.json
between steps (pause / resume / stop / resize, see engine/control.py).

One step on any tree equals one single-thread step on the same global batch: sequences are
chosen by (seed, step, index) whatever the worker count, losses are summed per token, and the
reduced gradient is divided once by the global batch's token count on Node Zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from crystalline.config import MAX_WORKERS, ModelConfig, TrainConfig
from crystalline.data.batching import Batches
from crystalline.data.corpus import Corpus, load_corpus
from crystalline.engine.balance import check_balance, check_straggler_mode, check_stragglers, step_efficiency
from crystalline.engine.hierarchy import Hierarchy
from crystalline.engine.memory import check_fits
from crystalline.engine.optimizer import AdamW, learning_rate
from crystalline.engine.spheres import SYNC_MODES, Job, SphereTree
from crystalline.engine.control import ControlReader
from crystalline.engine.stats import FIELD, History, SphereStats, group_tokens_per_s, slowest_group
from crystalline.engine.telemetry import remove_other_ranks, telemetry_path
from crystalline.errors import ConfigError, TrainingError
from crystalline.model.gpt import GPT

VAL_FRACTION = 0.1
MAX_SKIPPED_IN_A_ROW = 10     # non-finite gradients or updates this many steps running stop the run
CONTROL_POLL_S = 0.05         # while paused by the control file, how often it is read again
log = logging.getLogger(__name__)


class TrainingStopped(TrainingError):
    """stop() ended the step before its update: the parameters are as before that step."""


@dataclass(frozen=True)
class StepResult:
    step: int              # the step just completed (0-based)
    loss: float            # mean training loss over the global batch, before the update
    tokens: int            # tokens in the global batch
    seconds: float         # wall time of the step
    tokens_per_s: float
    lr: float
    grad_norm: float       # global gradient norm before clipping
    skipped: bool          # True when the gradient or the update was not finite: nothing applied
    timings: dict          # hand_out / parallel (A to B) / reduce / update / total seconds


def default_workers() -> int:
    return os.cpu_count() or 1


@contextlib.contextmanager
def _ctrl_c_interrupts(trainer):
    """In the main thread, while Python's default SIGINT handler is in place: Ctrl-C (or a
    notebook's interrupt) calls trainer.interrupt() instead of raising KeyboardInterrupt wherever
    the thread happens to be (inside a queue's lock, it would leave the lock held and the next
    wait on it would hang). A second Ctrl-C raises KeyboardInterrupt."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        trainer.interrupt()
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stall_text(stall: dict) -> str:
    first = stall["spheres"][0] if stall["spheres"] else None
    who = (f"sphere {first['sphere']} ({first['role']}, group {first['group']}) not at "
           f"{first['not_arrived_at']}" if first else "waiting")
    return f"STALLED {stall['seconds']:.0f}s at step {stall['step']}: {who}"


class Trainer:
    """Data-parallel training of one GPT over a hierarchy of sphere threads.

    corpus: a path (text file, folder, "squad:PATH") or a loaded Corpus; tokenizer: None/"byte",
    "word", a tokenizer JSON path or a Tokenizer. The model's vocab_size is taken from the
    tokenizer. workers: worker spheres (default: this machine's cores), or pass a Hierarchy.
    run_dir: a folder for the telemetry file (and the control file); None keeps stats in memory.
    balance: "static" (fixed slices) or "dynamic" (chunks taken as workers finish);
    stragglers: {worker index: factor >= 1}, slowed by sleeping or, with straggler_mode="busy",
    spinning (see engine/balance.py).
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, corpus, workers: int | None = None,
                 hierarchy: Hierarchy | None = None, sync: str = "lock_free", cache_dir=None,
                 tokenizer=None, run_dir=None, balance: str = "static", stragglers: dict | None = None,
                 straggler_mode: str = "sleep"):
        if sync not in SYNC_MODES:
            raise ConfigError(f"sync={sync!r} is not a sync mode; use one of {list(SYNC_MODES)}")
        self.balance, self.straggler_mode = check_balance(balance), check_straggler_mode(straggler_mode)
        self.corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, tokenizer, cache_dir)
        if model_cfg.vocab_size != self.corpus.tokenizer.vocab_size:
            model_cfg = model_cfg.replace(vocab_size=self.corpus.tokenizer.vocab_size)
        self.model_cfg, self.train_cfg, self.sync = model_cfg, train_cfg, sync
        # batches first: a corpus too short for a block is refused before anything is allocated
        train_tokens, val_tokens = self.corpus.split(VAL_FRACTION)
        T, B = model_cfg.block_size, train_cfg.batch_size
        self.batches = Batches(train_tokens, T, B, train_cfg.seed)
        self.val_batches = Batches(val_tokens, T, B, train_cfg.seed + 1) if len(val_tokens) > T + 1 else None
        self.hierarchy = self._make_hierarchy(workers, hierarchy)
        check_fits(model_cfg, train_cfg.batch_size, self.hierarchy, self._sequences()[1])   # before allocating
        self.model = GPT(model_cfg, seed=train_cfg.seed, precision=train_cfg.precision)
        self.optimizer = AdamW(self.model, train_cfg)
        self.steps_done = 0
        self.skipped_steps = 0
        self._skipped_in_a_row = 0
        # Watchdog: a step running longer than max(factor x recent median, min seconds) is
        # reported in `self.stall` (which sphere has not arrived at which barrier).
        self.watchdog_factor, self.watchdog_min_s = 10.0, 10.0
        self.stall: dict | None = None
        self.on_stall = None            # optional callable(stall dict), e.g. a progress bar's
        self._recent_seconds: deque[float] = deque(maxlen=20)
        self.history = History()
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.stragglers = check_stragglers(stragglers, len(self.hierarchy.workers))
        self.stats = self._new_stats(self.hierarchy)
        # A run with a run folder takes requests from its control file (MPI: rank 0 reads it and
        # every rank acts on what it read, see DistributedTrainer._next_request).
        self._takes_requests = self.run_dir is not None
        self._control = ControlReader(self.run_dir) if self._takes_requests and self._rank_of()[0] == 0 else None
        self.stats.reads_control = self._control is not None
        self._control_paused = False
        self.stopped_by_control = False   # the last run ended on a "stop" request
        self._tree: SphereTree | None = None
        self._blas_limit = None
        self._step_lock = threading.RLock()
        self._started_at = time.time()
        self._driver: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._interrupted = False        # set by interrupt(); a plain flag, so no lock is taken
        self._running = threading.Event()
        self.driver_error: BaseException | None = None
        self._process = psutil.Process()

    # ------------------------------------------------------------------ shape
    @staticmethod
    def _make_hierarchy(workers, hierarchy) -> Hierarchy:
        if hierarchy is not None:
            if workers is not None and workers != len(hierarchy.workers):
                raise ConfigError(f"workers={workers} disagrees with the hierarchy's "
                                  f"{len(hierarchy.workers)} workers; pass one or the other")
            return hierarchy
        workers = default_workers() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) \
                or not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"workers={workers!r} is invalid: use an integer from 1 to {MAX_WORKERS}")
        return Hierarchy.for_workers(int(workers))

    def _rank_of(self) -> tuple[int, int]:
        """(this process's rank, ranks): (0, 1) here; crystalline.distributed overrides it."""
        return 0, 1

    def _new_stats(self, hierarchy: Hierarchy) -> SphereStats:
        """Stats for `hierarchy`, in the run folder's telemetry file if there is one."""
        rank, ranks = self._rank_of()
        path = None if self.run_dir is None else telemetry_path(self.run_dir, rank)
        previous = getattr(self, "stats", None)
        if path is not None and previous is None and rank == 0:
            remove_other_ranks(self.run_dir, ranks)
        return SphereStats(hierarchy, path, rank, ranks, previous=previous)

    @property
    def workers(self) -> int:
        return len(self.hierarchy.workers)

    def resize(self, workers: int | None = None, hierarchy: Hierarchy | None = None) -> None:
        """Reshape the sphere tree between steps; parameters, AdamW state and history are kept."""
        new = self._make_hierarchy(workers, hierarchy)
        lost = [w for w in self.stragglers if w >= len(new.workers)]
        if lost:
            raise ConfigError(f"stragglers {lost} are not workers of a {len(new.workers)}-worker tree; "
                              "call set_stragglers() without them first")
        with self._step_lock:
            self._close_tree()
            self.hierarchy = new
            self.stats = self._new_stats(new)

    # ------------------------------------------------------------------ steps
    def _ensure_tree(self) -> SphereTree:
        if self._tree is None or not self._tree.alive:
            self._close_tree()
            self._blas_limit = threadpool_limits(limits=1)   # parallelism comes from the spheres
            self._tree = SphereTree(self.hierarchy, self.model, self._sequences(), self.stats,
                                    self._update, self.sync, self.balance, self.straggler_mode,
                                    dropout_seed=self.train_cfg.seed)
            self._apply_stragglers()
            self.stats.row(self.hierarchy.node_zero.id)[FIELD["bytes"]] = \
                self.model.params.nbytes + self.optimizer.nbytes + self.model.bf16_nbytes
        return self._tree

    def _close_tree(self) -> None:
        if self._tree is not None:
            self._tree.close()
            self._tree = None
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    # ------------------------------------------------------------------ stragglers, balance
    def set_stragglers(self, stragglers: dict, mode: str | None = None) -> None:
        """Between steps: slow these workers ({worker index: factor >= 1}; {} for none) by
        sleeping or, mode="busy", spinning (None keeps the current mode)."""
        checked = check_stragglers(stragglers, self.workers)
        mode = self.straggler_mode if mode is None else check_straggler_mode(mode)
        with self._step_lock:
            if mode != self.straggler_mode:
                self._close_tree()          # the next step builds a tree in the new mode
            self.stragglers, self.straggler_mode = checked, mode
            self._apply_stragglers()

    def _apply_stragglers(self) -> None:
        if self._tree is not None:
            self._tree.slowdown[:] = 1.0
            for w, factor in self.stragglers.items():
                self._tree.slowdown[w] = factor

    def set_balance(self, balance: str) -> None:
        """Between steps: "static" or "dynamic" from the next step on."""
        balance = check_balance(balance)
        with self._step_lock:
            if balance != self.balance:
                self._close_tree()
                self.balance = balance

    @property
    def last_assignment(self) -> list[list[tuple[int, int]]]:
        """Per worker, (first sequence, count) of each chunk it computed in the last step."""
        return self._tree.last_assignment if self._tree is not None else []

    # Scale-out hooks (crystalline.distributed overrides them): which sequences of each global
    # batch this process computes, and how its sums combine with other processes' sums.
    def _sequences(self) -> tuple[int, int]:
        return 0, self.train_cfg.batch_size

    def _combine(self, grad: np.ndarray | None, loss_sum: float) -> float:
        """Add other processes' gradient (in place) and loss sums; here there are none."""
        return loss_sum

    @property
    def tokens_per_step(self) -> int:
        return self.train_cfg.batch_size * self.model_cfg.block_size

    def _update(self, grad: np.ndarray, loss_sum: float):
        """Node Zero, after the reduction: mean-loss gradient, clip, AdamW, count the step."""
        loss_sum = self._combine(grad, loss_sum)
        norm, applied = self.optimizer.update(grad, self.steps_done, 1.0 / self.tokens_per_step)
        self.steps_done += 1
        self.skipped_steps += not applied
        self._skipped_in_a_row = 0 if applied else self._skipped_in_a_row + 1
        self.stats.step = self.steps_done
        return loss_sum / self.tokens_per_step, norm, applied

    def _stall_after(self) -> float:
        if not self._recent_seconds:
            return max(self.watchdog_min_s, 60.0)       # the first step includes compilation
        return max(self.watchdog_min_s, self.watchdog_factor * statistics.median(self._recent_seconds))

    def _report_stall(self, report: list[dict], seconds: float) -> None:
        self.stall = {"step": self.steps_done, "seconds": seconds, "spheres": report}
        holding = ", ".join(f"sphere {r['sphere']} ({r['role']} {r['worker']}, group {r['group']}) "
                            f"not at {r['not_arrived_at']}" for r in report[:5]) or "no sphere"
        log.warning("step %d has run %.1f s: waiting for %s", self.steps_done, seconds, holding)
        if self.on_stall is not None:
            self.on_stall(self.stall)

    def _run_job(self, job: Job):
        outcome = self._ensure_tree().run(job, self._stall_after(), self._report_stall)
        self.stall = None
        if outcome.failure is not None:
            sphere, exc = outcome.failure
            self._close_tree()
            if isinstance(exc, TrainingStopped):      # e.g. MPI ranks agreed to stop: not a failure
                raise TrainingStopped(str(exc)) from None
            raise TrainingError(f"sphere {sphere.id} ({'node zero' if sphere.is_node_zero else sphere.role}, "
                                f"worker {sphere.worker_index}, group {sphere.group}, level {sphere.level}) "
                                f"raised {type(exc).__name__}: {exc} during {job.kind} step {job.step}; "
                                "the parameters are as before that step") from exc
        if outcome.aborted:
            self._close_tree()
            raise TrainingStopped(f"stopped during {job.kind} step {job.step}; "
                                  "the parameters are as before that step")
        return outcome

    def step(self) -> StepResult:
        """One global step over the whole tree."""
        with self._step_lock:
            step = self.steps_done
            lr = learning_rate(step, self.train_cfg)
            try:
                if self._stop_before_step():
                    raise TrainingStopped(f"stopped before step {step}; the parameters are as before it")
                before = self.stats.snapshot()
                outcome = self._run_job(Job("train", step, self.batches))
            except TrainingStopped:
                self._interrupted = False            # the request is answered
                raise
            loss, norm, applied = outcome.update
            seconds = outcome.timings["total"]
            result = StepResult(step=step, loss=loss, tokens=self.tokens_per_step, seconds=seconds,
                                tokens_per_s=self.tokens_per_step / seconds, lr=lr, grad_norm=norm,
                                skipped=not applied, timings=outcome.timings)
            self._record(result, before)
            self._recent_seconds.append(seconds)
            if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise TrainingError(f"the gradient or the update was not finite for "
                                    f"{self._skipped_in_a_row} steps in a row (up to step {step}); no "
                                    "update was applied. Lower the learning rate or check the data")
            return result

    def evaluate(self, batches: int | None = None) -> float:
        """Mean validation loss over a fixed set of `batches` validation batches (forward only)."""
        if self.val_batches is None:
            raise TrainingError("the corpus is too short to hold out validation data; "
                                "use a longer corpus or a smaller block_size")
        n = batches or self.train_cfg.eval_batches
        with self._step_lock:
            sums = [self._combine(None, self._run_job(Job("eval", k, self.val_batches)).loss_sum)
                    for k in range(n)]
        return float(np.sum(sums)) / (n * self.tokens_per_step)

    def _record(self, r: StepResult, before: dict) -> None:
        snap = self.stats.snapshot()
        self.history.append({
            "step": r.step, "loss": r.loss, "tokens": r.tokens, "tokens_per_s": r.tokens_per_s,
            "seconds": r.seconds, "lr": r.lr, "grad_norm": r.grad_norm, "skipped": r.skipped,
            "rss": self._process.memory_info().rss, "time": time.time() - self._started_at,
            "workers": self.workers, "group_tokens_per_s": group_tokens_per_s(snap).tolist(),
            "balance": self.balance, "efficiency": step_efficiency(before, snap, r.seconds),
            **({"assignment": self.last_assignment} if self.balance == "dynamic" else {}),
        })

    def run(self, steps: int, progress: bool = True, on_step=None) -> list[StepResult]:
        """Run `steps` steps (validating every eval_interval) with an optional tqdm bar.

        on_step: optional callable(history record), called after each step (and its validation).
        A stalled step shows on the bar which sphere has not arrived at which barrier. Ctrl-C
        (in the main thread), interrupt() or stop() from any thread, at any moment, even just
        before run() begins, ends it with TrainingStopped after at most the step in flight; the
        parameters are those after the last completed step. A completed step always reaches
        on_step, even when its validation is interrupted. With a run folder, a "stop" request in
        its control file ends it early (stopped_by_control; the results so far are returned).
        """
        from tqdm.auto import tqdm
        results, previous, finished = [], self.on_stall, False
        self.stopped_by_control = False
        self.stats.state = "paused" if self._control_paused else "running"
        with _ctrl_c_interrupts(self), \
                tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True) as bar:
            self.on_stall = lambda stall: bar.set_postfix_str(_stall_text(stall))
            try:
                for _ in range(steps):
                    if not self._between_steps(self._stop_before_step):
                        break
                    results.append(self.step())      # raises TrainingStopped if a stop is pending
                    try:
                        if self._eval_due():
                            self._evaluate_into_history()
                    finally:
                        self._report_step(bar, on_step)
                else:
                    finished = True
            except TrainingStopped:
                self._interrupted = False            # this run took the request
                raise
            finally:
                self.on_stall = previous
                self._control_paused = False
                self.stats.state = "finished" if finished else "stopped"
        return results

    def _report_step(self, bar, on_step) -> None:
        record = self.history[-1]
        postfix = {"loss": f"{record['loss']:.3f}", "tok/s": f"{record['tokens_per_s']:,.0f}",
                   "eff": f"{record['efficiency']:.0%}", "slowest group": self.slowest_group()}
        if "val_loss" in record:
            postfix["val"] = f"{record['val_loss']:.3f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if on_step is not None:
            on_step(record)

    def _stop_before_step(self) -> bool:
        """Whether run() ends before its next step (DistributedTrainer lets the ranks decide)."""
        return self._interrupted

    def _eval_due(self) -> bool:
        every = self.train_cfg.eval_interval
        return self.val_batches is not None and every > 0 and self.steps_done % every == 0

    def _evaluate_into_history(self) -> float:
        val = self.evaluate()
        self.history[-1]["val_loss"] = val
        return val

    def timeline(self, last: int = 50) -> dict[str, np.ndarray]:
        """Per-sphere phase intervals of the last `last` steps of the current tree: equal-length
        arrays sphere, rank, step, phase (stats.PHASES names), start, end (time.time() seconds),
        sorted by start."""
        return self.stats.timeline(last)

    # ------------------------------------------------------------------ control file
    def _between_steps(self, stopping) -> bool:
        """Act on a new request in the run folder's control file; while paused by one, wait
        (reading the file again every CONTROL_POLL_S) until stopping() or a request ends it.
        False: a stop request ends the loop."""
        if not self._takes_requests:
            return True
        while True:
            request, stop = self._next_request(stopping)
            if request is not None:
                self._act_on(request)
            if not self._control_paused or stop:
                return not self.stopped_by_control
            time.sleep(CONTROL_POLL_S)

    def _next_request(self, stopping) -> tuple[dict | None, bool]:
        """(a new control request or None, whether to stop waiting); MPI ranks agree on both."""
        return self._control.poll(), stopping()

    def _act_on(self, request: dict) -> None:
        action, error = request["action"], None
        if action == "pause":
            self._control_paused, self.stats.state = True, "paused"
        elif action == "resume":
            self._control_paused, self.stats.state = False, "running"
        elif action == "stop":
            self._control_paused, self.stopped_by_control = False, True
        else:
            try:
                self.resize(workers=request.get("workers"))
            except ConfigError as e:
                error = str(e)
        if self._control is not None:            # MPI: rank 0 answers for every rank
            self._control.reply(request, error)

    def slowest_group(self) -> int:
        """The top-level group with the lowest tokens/s in the last step (-1 before any step)."""
        return slowest_group(self.stats.snapshot())

    # ------------------------------------------------------------------ background
    def start(self, steps: int | None = None) -> None:
        """Train in a background thread for `steps` steps (None: until stop())."""
        if self._driver is not None and self._driver.is_alive():
            raise TrainingError("the trainer is already running; call stop() first")
        self._stop_requested.clear()
        self._interrupted = False
        self._running.set()
        self.driver_error = None
        self._driver = threading.Thread(target=self._drive, args=(steps,), daemon=True,
                                        name="crystalline-driver")
        self._driver.start()

    def _drive(self, steps: int | None) -> None:
        done = 0
        self.stopped_by_control = False
        self.stats.state = "running"
        try:
            while (steps is None or done < steps) and not self._stop_requested.is_set():
                self._running.wait()
                if not self._between_steps(self._stop_requested.is_set) or self._stop_requested.is_set():
                    break
                self.step()
                if self._eval_due():
                    self._evaluate_into_history()
                done += 1
        except TrainingStopped:
            pass
        except BaseException as exc:   # noqa: BLE001 - kept for the notebook to show
            self.driver_error = exc
        finally:
            self._control_paused = False
            self.stats.state = "finished" if steps is not None and done >= steps else "stopped"

    @property
    def running(self) -> bool:
        return self._driver is not None and self._driver.is_alive() and self._running.is_set()

    @property
    def state(self) -> str:
        """running / paused / stopped / idle (never trained) / failed (background training raised)."""
        if self.driver_error is not None:
            return "failed"
        if self._driver is not None and self._driver.is_alive():
            return "running" if self._running.is_set() and not self._control_paused else "paused"
        return "stopped" if self.steps_done else "idle"

    def pause(self) -> None:
        """Finish the current step, then wait until resume()."""
        self._running.clear()
        if self._driver is not None and self._driver.is_alive():
            self.stats.state = "paused"

    def resume(self) -> None:
        """Resume after pause(), or after a "pause" request in the control file."""
        self._control_paused = False
        self._running.set()
        if self._driver is not None and self._driver.is_alive():
            self.stats.state = "running"

    def stop(self) -> None:
        """Stop background training, or a run() in another thread, promptly: an in-flight step
        is abandoned before its update.

        Returns when every sphere thread has ended; the parameters are those after the last
        completed step. A stop() that finds no background training pending stays pending until
        a run() takes it: a run() in progress, or about to begin, ends before its next step.
        """
        self._stop_requested.set()
        self._running.set()
        self.interrupt()
        if self._driver is not None:
            self._driver.join()
            self._driver = None
            self._interrupted = False           # the background training took the request
        with self._step_lock:
            self._close_tree()

    def interrupt(self) -> None:
        """End run() at once: the step in flight is abandoned before its update and run() raises
        TrainingStopped (a request made before run() begins ends it before its first step).
        Takes no lock and waits for nothing, so a signal handler may call it (run()'s Ctrl-C
        handler and the CLI's do); close() then ends the threads."""
        self._interrupted = True
        self._abort_in_flight()

    def _abort_in_flight(self) -> None:
        tree = self._tree
        if tree is not None:
            tree.abort()

    def close(self) -> None:
        """Stop training and end every sphere thread; no stop request is left pending."""
        self.stop()
        self._interrupted = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write a checkpoint atomically (parameters, AdamW moments, configs, tokenizer, step)."""
        from crystalline.checkpoint import save_checkpoint
        with self._step_lock:
            return save_checkpoint(path, self)

    @classmethod
    def load(cls, path, corpus=None, workers: int | None = None, sync: str = "lock_free",
             cache_dir=None, run_dir=None) -> "Trainer":
        """Rebuild a trainer from a checkpoint; training continues exactly where it stopped."""
        from crystalline.checkpoint import load_trainer
        return load_trainer(cls, path, corpus=corpus, workers=workers, sync=sync, cache_dir=cache_dir,
                            run_dir=run_dir)

    def __repr__(self) -> str:
        return (f"Trainer({self.model.num_parameters:,} parameters, {self.workers} workers, "
                f"{len(self.hierarchy.spheres)} spheres, step {self.steps_done}, sync={self.sync!r}, "
                f"balance={self.balance!r})")
