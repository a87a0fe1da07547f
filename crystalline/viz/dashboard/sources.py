"""What a dashboard watches: a Trainer in this process, or a run folder (live or finished).

    source = as_source(trainer_or_run_or_path)
    pull = source.pull(cursor, last_steps=5)    # Pull: snapshot, new records, timeline, state
    cursor = pull.cursor                        # (opaque; None: from the first record)
    source.actions()                            # the controls that can act now
    source.act("pause") / source.act("resize", workers=12)

Both read only: `pull` copies the stats and reads the history since a cursor; nothing here
waits on training. Controls act on the Trainer directly, or on a live CLI run through
`Run.request` (a control file the trainer reads between steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crystalline.config import MAX_WORKERS
from crystalline.errors import ConfigError


@dataclass
class Pull:
    """One read of a source: the stats snapshot, history records after the cursor, the phase
    timeline of the last steps, the run state and step count, and the tree (changes on resize)."""
    snapshot: dict
    records: list
    cursor: object              # where the next pull's records start (a count, or a step)
    read_timeline: object       # () -> the phase timeline, read on first call (an Exception
                                #   instance if reading failed); the task stream calls it
    state: str
    steps: int
    workers: int
    generation: object
    hierarchies: list           # the tree of each rank (one for a Trainer)
    error: str | None = None
    shared: dict = field(default_factory=dict)   # what several panels compute from this pull, once


def parse_workers(value) -> int:
    """A worker count typed in the box: an integer from 1 to MAX_WORKERS, or a ConfigError
    saying what is wrong (never a silent 1)."""
    text = str(value).strip()
    try:
        workers = int(text)
    except ValueError:
        raise ConfigError(f"workers {text!r} is not a whole number: type an integer from 1 to "
                          f"{MAX_WORKERS}") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers {workers} is out of range: type an integer from 1 to {MAX_WORKERS}")
    return workers


def timeline_reader(source, last_steps: int):
    """A function reading source.timeline(last=...) once, when first called (the task stream
    reads it only when a step has completed), giving the exception it raised instead: only the
    task stream fails (and says so); the other panels still get their pull."""
    cache = []

    def read():
        if not cache:
            try:
                cache.append(source.timeline(last=last_steps))
            except Exception as exc:      # noqa: BLE001 - handed to the task stream panel
                cache.append(exc)
        return cache[0]
    return read


class TrainerSource:
    """A Trainer in this process: pulls its stats, history and timeline; the buttons call it."""

    kind = "in-process"

    def __init__(self, trainer):
        self.trainer = trainer
        self._stats = None
        self._generation = 0

    def describe(self) -> dict:
        tr = self.trainer
        return {"title": "crystalline: live training", "kind": self.kind,
                "detail": f"{tr.model.num_parameters:,} parameters · batch "
                          f"{tr.train_cfg.batch_size} × {tr.model_cfg.block_size} tokens · in this kernel"}

    def pull(self, cursor: int | None, last_steps: int) -> Pull:
        tr = self.trainer
        stats = tr.stats                            # replaced by resize: read it once, fresh
        if stats is not self._stats:
            self._stats = stats
            self._generation += 1
        hierarchy = tr.hierarchy
        snapshot = stats.snapshot()
        records, cursor = tr.history.since(cursor or 0)
        timeline = timeline_reader(tr, last_steps)
        error = tr.driver_error
        return Pull(snapshot, records, cursor, timeline, tr.state, tr.steps_done, tr.workers,
                    self._generation, [hierarchy],
                    None if error is None else f"{type(error).__name__}: {error}")

    @property
    def ended(self) -> bool:
        """Nothing more will change (a Trainer can always be started again)."""
        return False

    def actions(self) -> list[str]:
        state = self.trainer.state
        return (["pause", "stop", "resize"] if state == "running" else
                ["resume", "stop", "resize"] if state == "paused" else ["start", "resize"])

    def act(self, action: str, workers=None) -> str:
        tr = self.trainer
        if action == "start":
            tr.start()
            return "training in the background"
        if action == "pause":
            tr.pause()
            return "pausing after the step in flight"
        if action == "resume":
            tr.resume()
            return "resumed"
        if action == "stop":
            tr.stop()
            return f"stopped after {tr.steps_done:,} steps"
        if action == "resize":
            n = parse_workers(workers)
            tr.resize(workers=n)
            return f"resized to {n} worker{'s' * (n != 1)}"
        raise ConfigError(f"unknown dashboard action {action!r}")


class RunSource:
    """A run folder (crystalline.open_run): a CLI or MPI run, live, or finished (replay).

    A pull parses only the metrics.jsonl lines appended since the last one (`cursor` is the last
    step seen; a resumed run, written by a new process, is read again from its start) and
    rebuilds the trees only when their shape changes."""

    kind = "run folder"

    def __init__(self, run):
        self.run = run
        self._started = None          # the writing process seen by the last pull
        self._steps = 0
        self._shape = self._hierarchies = None
        self._alive = run.alive

    def describe(self) -> dict:
        path = Path(self.run.path)
        return {"title": f"crystalline: {path.name}", "kind": self.kind,
                "detail": f"{path} · {'live' if self._alive else 'finished: replay'}"}

    def pull(self, cursor: int | None, last_steps: int) -> Pull:
        run = self.run
        started = run.started
        if started != self._started:               # a new process (resumed): read from the start
            self._started, cursor, self._steps = started, None, 0
        snapshot = run.snapshot()
        records = run.history(since=cursor)
        if records:
            cursor = records[-1]["step"]
            self._steps = max(self._steps, cursor + 1)
        shape = hash((snapshot["parent"].tobytes(), snapshot["rank"].tobytes()))
        if shape != self._shape:
            hierarchies = run.hierarchies
            consistent = sum(len(h) for h in hierarchies) == len(snapshot["parent"])
            self._shape, self._hierarchies = (shape if consistent else None), hierarchies
        self._alive = run.alive
        workers = int((snapshot["role"] == "worker").sum())
        steps = max(int(snapshot.get("step", 0)), self._steps)
        return Pull(snapshot, records, cursor, timeline_reader(run, last_steps), run.state, steps,
                    workers, shape, self._hierarchies)

    @property
    def ended(self) -> bool:
        """The writing process had ended at the last pull: that pull showed everything there is."""
        return not self._alive

    def actions(self) -> list[str]:
        run = self.run
        if not (self._alive and run.controllable):
            return []
        return {"running": ["pause", "stop", "resize"],
                "paused": ["resume", "stop", "resize"]}.get(run.state, [])

    def act(self, action: str, workers=None) -> str:
        if action not in self.actions():
            raise ConfigError(f"{action!r} cannot act on this run now (state {self.run.state}, "
                              f"{'alive' if self.run.alive else 'not running'})")
        if action == "resize":
            n = parse_workers(workers)
            self.run.request("resize", workers=n)
            return f"asked the run to resize to {n} worker{'s' * (n != 1)}"
        self.run.request(action)
        return f"asked the run to {action}"


def as_source(source):
    """A Trainer, a Run (crystalline.open_run) or a run folder path -> the source to pull from."""
    if isinstance(source, (TrainerSource, RunSource)):
        return source
    if isinstance(source, (str, Path)):
        from crystalline.runs import open_run
        return RunSource(open_run(source))
    if hasattr(source, "stats") and hasattr(source, "history"):
        return TrainerSource(source)
    if hasattr(source, "snapshot") and hasattr(source, "request"):
        return RunSource(source)
    raise ConfigError(f"Dashboard needs a Trainer, a run folder path or crystalline.open_run(...); "
                      f"got {type(source).__name__}")
