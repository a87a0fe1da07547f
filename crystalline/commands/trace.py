"""`crystalline trace`: a run's phase timeline as a Chrome trace (Perfetto, chrome://tracing).

    crystalline trace runs/small-20261130-1015 --out trace.json --last 50

One process per MPI rank ("rank 0"), one track per sphere named by its label ("node zero",
"g3 c5", "g3 w15"), one complete event ("ph": "X") per phase interval (idle, wait_a, compute,
wait_b, reduce, update) with its step in args. Times are microseconds since the first interval
written; `otherData.epoch_s` is that instant in time.time() seconds. The file is written
atomically; a live run is traced as far as it has got.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trace", help="export a run's phase timeline as a Chrome trace (Perfetto)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (live or finished)")
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--last", type=int, default=50, metavar="N", help="the last N steps (default 50)")
    p.set_defaults(func=run)


def sphere_label(role: str, group: int, worker_index: int, sphere_id: int) -> str:
    """"node zero", "g<group> c<id>" for controls, "g<group> w<worker index>" for workers."""
    if role == "node_zero":
        return "node zero"
    return f"g{group} w{worker_index}" if role == "worker" else f"g{group} c{sphere_id}"


def chrome_trace(run, last: int) -> dict:
    """The Chrome trace event JSON object of `run`'s timeline over its last `last` steps."""
    timeline = run.timeline(last)
    snap = run.snapshot()
    events = []
    for rank in sorted(set(snap["rank"].tolist())):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
    for i in range(len(snap["sphere_id"])):
        pid, tid = int(snap["rank"][i]), int(snap["sphere_id"][i])
        label = sphere_label(str(snap["role"][i]), int(snap["group"][i]), int(snap["worker_index"][i]), tid)
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    epoch = float(timeline["start"].min()) if len(timeline["start"]) else 0.0
    # Whole microseconds from one origin: an interval ends exactly where the sphere's next begins.
    starts = ((timeline["start"] - epoch) * 1e6).round().astype("int64")
    ends = ((timeline["end"] - epoch) * 1e6).round().astype("int64")
    for k in range(len(starts)):
        events.append({"ph": "X", "name": str(timeline["phase"][k]), "cat": "phase",
                       "pid": int(timeline["rank"][k]), "tid": int(timeline["sphere"][k]),
                       "ts": int(starts[k]), "dur": int(ends[k] - starts[k]),
                       "args": {"step": int(timeline["step"][k])}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run": str(run.path), "epoch_s": epoch, "last_steps": last}}


def run(args) -> int:
    from crystalline.io import atomic_write_bytes
    from crystalline.errors import ConfigError
    from crystalline.runs import open_run
    if args.last <= 0:
        raise ConfigError(f"--last {args.last} is invalid: use a positive number of steps")
    trace = chrome_trace(open_run(args.run_dir), args.last)
    atomic_write_bytes(args.out, json.dumps(trace).encode("utf-8"))
    n = sum(e["ph"] == "X" for e in trace["traceEvents"])
    print(f"wrote {args.out}: {n} phase intervals; open it in https://ui.perfetto.dev or chrome://tracing")
    return 0
