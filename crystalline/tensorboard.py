"""TensorBoard event files beside metrics.jsonl: `tensorboard --logdir runs/` shows every run.

    log = TensorBoardLog(run_dir)      # needs the `tensorboard` extra (tensorboardX); else says once
    log.write(record)                  # one metrics.jsonl record -> scalars at its step
    log.close()

Each scalar's tag is its metrics.jsonl key (loss, val_loss, lr, grad_norm, tokens_per_s, rss,
seconds), and group g's tokens/s is `group_tokens_per_s/gNN`. TensorBoard stores float32
values. `python benchmarks/tensorboard.py` prints what a record costs a step; the `crc32c`
package in the extra keeps tensorboardX's record checksums out of pure Python.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

FLUSH_S = 10.0     # seconds between flushes of the event file (TensorBoard then shows them)
SCALARS = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "rss", "seconds")
_warned = False


class TensorBoardLog:
    """Scalars of each training record, written to an event file in `run_dir` (or nothing, with
    one notice, when tensorboardX is not installed).

    One event per record holds every scalar. The event of each set of tags is built once and
    only its values and step change, so a record costs about as much as its json.dumps; the
    file is written in the calling thread and flushed every FLUSH_S seconds and on close."""

    def __init__(self, run_dir):
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event
        except ImportError:
            self.writer = None
            _skipping_notice()
            return
        self.writer = EventsWriter(str(Path(run_dir) / "events"), f".{os.getpid()}")
        self._new_event = Event
        self._events = {}            # tuple of tags -> (Event, its summary values in that order)
        self._flushed = time.monotonic()

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        keys = [key for key in SCALARS if key in record]
        values = [float(record[key]) for key in keys] + \
            [float(x) for x in record.get("group_tokens_per_s", ())]
        tags = (*keys, len(values) - len(keys))
        if tags not in self._events:
            event = self._new_event()
            for tag in keys + [f"group_tokens_per_s/g{g:02d}" for g in range(tags[-1])]:
                event.summary.value.add(tag=tag)
            self._events[tags] = event, list(event.summary.value)
        event, slots = self._events[tags]
        for slot, value in zip(slots, values):
            slot.simple_value = value
        event.step, event.wall_time = int(record["step"]), time.time()
        self.writer.write_event(event)
        if time.monotonic() - self._flushed > FLUSH_S:
            self.writer.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _skipping_notice() -> None:
    global _warned
    if not _warned:
        _warned = True
        print("tensorboardX is not installed: skipping TensorBoard event files "
              "(pip install 'crystalline[tensorboard]' to write them)", file=sys.stderr)
