"""What a dashboard watches: a Trainer in this process, or a run folder (live or finished).

    source = as_source(trainer_or_run_or_path)
    pull = source.pull(cursor, last_steps=5)    # Pull: snapshot, new records, timeline, state
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
    cursor: int
    read_timeline: object       # () -> the phase timeline, read on first call (an Exception
                                #   instance if reading failed); the task stream calls it
    state: str
    steps: int
    workers: int
    generation: object
    hierarchies: list           # the tree of each rank (one for a Trainer)
    error: str | None = None
    extra: dict = field(default_factory=dict)


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

    def pull(self, cursor: int, last_steps: int) -> Pull:
        tr = self.trainer
        stats = tr.stats                            # replaced by resize: read it once, fresh
        if stats is not self._stats:
            self._stats = stats
            self._generation += 1
        hierarchy = tr.hierarchy
        snapshot = stats.snapshot()
        records, cursor = tr.history.since(cursor)
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
    """A run folder (crystalline.open_run): a CLI or MPI run, live, or finished (replay)."""

    kind = "run folder"

    def __init__(self, run):
        self.run = run
        self._history: list = []

    def describe(self) -> dict:
        path = Path(self.run.path)
        return {"title": f"crystalline: {path.name}", "kind": self.kind,
                "detail": f"{path} · {'live' if self.run.alive else 'finished: replay'}"}

    def pull(self, cursor: int, last_steps: int) -> Pull:
        run = self.run
        snapshot = run.snapshot()
        history = run.history()
        records = history[cursor:] if cursor <= len(history) else history
        timeline = timeline_reader(run, last_steps)
        hierarchies = run.hierarchies
        workers = int((snapshot["role"] == "worker").sum())
        state = run.state
        steps = max(int(snapshot.get("step", 0)), int(history[-1]["step"]) + 1 if history else 0)
        generation = hash((snapshot["parent"].tobytes(), snapshot["rank"].tobytes()))   # the shape
        return Pull(snapshot, records, len(history), timeline, state, steps, workers, generation,
                    hierarchies)

    @property
    def ended(self) -> bool:
        """The writing process has ended: a last pull shows everything there is."""
        return not self.run.alive

    def actions(self) -> list[str]:
        run = self.run
        if not (run.alive and run.controllable):
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
