"""What writing TensorBoard events costs a training step (the observer must cost <= 2%).

    python benchmarks/tensorboard.py [--records 2000] [--rounds 5]

Times TensorBoardLog.write on real metrics records (12 group rates, a validation loss) into a
temporary run folder, in the calling thread as `crystalline train` calls it (tensorboardX's
own thread writes the file), and prints microseconds per record (median of rounds) against the
measured step time of the tiny and cllm-4.5m presets (2 workers, their default batch).
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from crystalline.config import preset  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402
from crystalline.tensorboard import TensorBoardLog  # noqa: E402


def step_seconds(name: str) -> tuple[float, dict]:
    """Median step time of a preset on 2 workers, and a real record of its history."""
    model_cfg, train_cfg = preset(name)
    with Trainer(model_cfg, train_cfg, ROOT / "data" / "tinyshakespeare.txt", workers=2) as tr:
        tr.run(8, progress=False)
        record = dict(tr.history[-1], val_loss=tr.evaluate(1))
        return statistics.median(r["seconds"] for r in list(tr.history)[3:]), record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    steps = {name: step_seconds(name) for name in ("tiny", "cllm-4.5m")}
    record = steps["tiny"][1]
    log = TensorBoardLog(tempfile.mkdtemp())
    if log.writer is None:
        sys.exit("install the tensorboard extra first: pip install -e '.[tensorboard]'")
    per_record = []
    for r in range(args.rounds):
        start = time.perf_counter()
        for i in range(args.records):
            record["step"] = r * args.records + i
            log.write(record)
        per_record.append((time.perf_counter() - start) / args.records)
    log.close()
    us = statistics.median(per_record) * 1e6
    print(f"TensorBoardLog.write: {us:.0f} us per record (median of {args.rounds} rounds of "
          f"{args.records}; rounds {', '.join(f'{x * 1e6:.0f}' for x in per_record)} us)")
    for name, (seconds, _) in steps.items():
        print(f"  {name}: step {seconds * 1e3:.1f} ms -> {us / 1e6 / seconds:.2%} of a step")


if __name__ == "__main__":
    main()
