"""TensorBoard event files beside metrics.jsonl: `tensorboard --logdir runs/` shows every run.

    log = TensorBoardLog(run_dir)      # needs the `tensorboard` extra (tensorboardX); else says once
    log.write(record)                  # one metrics.jsonl record -> scalars at its step
    log.close()

Each scalar's tag is its metrics.jsonl key (loss, val_loss, lr, grad_norm, tokens_per_s, rss,
seconds), and group g's tokens/s is `group_tokens_per_s/gNN`. TensorBoard stores float32
values. Writing costs a few microseconds a step (tensorboardX queues the events and a
background thread writes them).
"""

from __future__ import annotations

import sys

SCALARS = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "rss", "seconds")
_warned = False


class TensorBoardLog:
    """Scalars of each training record, written to event files in `run_dir` (or nothing, with
    one notice, when tensorboardX is not installed)."""

    def __init__(self, run_dir):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self.writer = None
            _skipping_notice()
            return
        self.writer = SummaryWriter(logdir=str(run_dir), flush_secs=10)

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key in SCALARS:
            if key in record:
                self.writer.add_scalar(key, float(record[key]), step)
        for group, value in enumerate(record.get("group_tokens_per_s", ())):
            self.writer.add_scalar(f"group_tokens_per_s/g{group:02d}", float(value), step)

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
