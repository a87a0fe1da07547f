"""What watching costs training: tokens/s with no dashboard, with a dashboard in this process,
and with a dashboard in another process watching the run folder.

    python benchmarks/dashboard_cost.py                      # cllm-4.5m, 2 and 63 workers
    python benchmarks/dashboard_cost.py --workers 2 --rounds 3 --seconds 15

One trainer per worker count trains in the background with a run folder (telemetry on in
every case, so the observer is the only difference). Rounds alternate the three cases, the
order rotating each round; each case's tokens/s is measured between step ends (the history
records' times) over `--seconds`, and the table gives medians and their ratio to no dashboard.
It also gives CPU time, steadier than tokens/s on a shared machine: the training's CPU seconds
per step (this process's CPU time, less the in-process monitor's own), what the observer itself
used (the monitor thread's time.thread_time, or the watching process's user + system time) as a
share of one core, and the bytes it sent per refresh (JSON and binary buffers).

The in-process dashboard is `Dashboard(trainer, refresh_hz)` with its monitor thread running,
its widget messages JSON-encoded as the kernel would send them (no browser is needed: pixels
are drawn in the browser, so this is the whole cost in the training process). The other
process runs `Dashboard(run_dir)` the same way (`--watch RUN_DIR`). Target: >= 0.98x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import comm
import psutil
from comm.base_comm import BaseComm

CASES = ("no dashboard", "dashboard in this process", "dashboard in another process")


class SerialisingComm(BaseComm):
    """A comm that JSON-encodes every message, as ipykernel does before sending it."""

    sent_bytes = 0
    messages = 0

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        SerialisingComm.sent_bytes += len(json.dumps({"type": msg_type, "data": data,
                                                      "metadata": metadata}, default=str))
        SerialisingComm.sent_bytes += sum(memoryview(b).nbytes for b in buffers or ())
        SerialisingComm.messages += 1


def use_serialising_comms() -> None:
    comm.create_comm = lambda *args, **kw: SerialisingComm(*args, **kw)


def watch(run_dir: str, refresh_hz: float) -> None:
    """The other process: a dashboard on the run folder until stdin closes."""
    use_serialising_comms()
    from crystalline.viz.dashboard import Dashboard
    dash = Dashboard(run_dir, refresh_hz=refresh_hz)
    opened, first = SerialisingComm.sent_bytes, dash.refreshes    # the widget's creation: once
    dash.start_monitor()
    print("watching", flush=True)
    sys.stdin.read()
    dash.close()
    print(json.dumps({"refreshes": dash.refreshes - first, "bytes": SerialisingComm.sent_bytes - opened,
                      "messages": SerialisingComm.messages, "monitor_cpu_s": round(dash.cpu_s, 4),
                      "period_s": round(dash.period, 3)}), flush=True)


def wait_steps(tr, n: int) -> None:
    target = tr.steps_done + n
    tick = threading.Event()
    while tr.steps_done < target:
        if tr.driver_error is not None:
            raise SystemExit(f"training failed: {tr.driver_error!r}")
        tick.wait(0.05)


def measure(tr, seconds: float, observer) -> tuple[float, float]:
    """Tokens/s between the end of the next step and the last step ending `seconds` later, and
    the training's CPU seconds per step meanwhile (this process's, less an in-process monitor's)."""
    wait_steps(tr, 1)
    observer.start_measuring()
    cpu0 = time.process_time()
    first = len(tr.history)
    start = tr.history[-1]["time"]
    threading.Event().wait(seconds)
    wait_steps(tr, 1)
    cpu = time.process_time() - cpu0 - (observer.cpu_seconds() - observer.cpu_at_start
                                        if observer.dash is not None else 0.0)
    records = list(tr.history)[first:]
    return sum(r["tokens"] for r in records) / (records[-1]["time"] - start), cpu / len(records)


class Observer:
    """Start and stop one case's observer around a measurement."""

    def __init__(self, case: str, tr, run_dir: Path, refresh_hz: float):
        self.case, self.tr, self.run_dir, self.refresh_hz = case, tr, run_dir, refresh_hz
        self.dash = self.proc = None
        self.report = {}
        self.cpu_at_start = self._wall = 0.0

    def cpu_seconds(self) -> float:
        """CPU seconds the observer has used so far (its thread, or its whole process)."""
        if self.dash is not None:
            return self.dash.cpu_s
        if self.proc is not None:
            times = psutil.Process(self.proc.pid).cpu_times()
            return times.user + times.system
        return 0.0

    def start_measuring(self) -> None:
        self.cpu_at_start, self._wall = self.cpu_seconds(), time.perf_counter()

    def cpu_share(self) -> float:
        """The observer's CPU time since start_measuring, as a share of one core."""
        return (self.cpu_seconds() - self.cpu_at_start) / (time.perf_counter() - self._wall)

    def __enter__(self):
        if self.case == CASES[1]:
            from crystalline.viz.dashboard import Dashboard
            self.dash = Dashboard(self.tr, refresh_hz=self.refresh_hz)
            self.opened, self.first = SerialisingComm.sent_bytes, self.dash.refreshes
            self.dash.start_monitor()
        elif self.case == CASES[2]:
            self.proc = subprocess.Popen([sys.executable, __file__, "--watch", str(self.run_dir),
                                          "--refresh-hz", str(self.refresh_hz)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if self.proc.stdout.readline().strip() != "watching":
                raise SystemExit("the watching process did not start")
            wait_steps(self.tr, 1)             # its start-up (imports) is not what we measure
        return self

    def __exit__(self, *exc):
        if self.dash is not None:
            self.report = {"refreshes": self.dash.refreshes - self.first,
                           "bytes": SerialisingComm.sent_bytes - self.opened,
                           "period_s": round(self.dash.period, 3)}
            self.dash.close()
        if self.proc is not None:
            out, _ = self.proc.communicate("", timeout=60)
            self.report = json.loads(out.strip().splitlines()[-1])


def run_workers(workers: int, args, corpus) -> dict[str, list[float]]:
    from crystalline import Trainer, preset
    model_cfg, train_cfg = preset(args.preset)
    train_cfg = train_cfg.replace(eval_interval=0, max_steps=1_000_000,
                                  **({"batch_size": args.batch} if args.batch else {}))
    results: dict[str, list[float]] = {c: [] for c in CASES}
    cpu: dict[str, list[float]] = {c: [] for c in CASES}         # the observer's share of a core
    train_cpu: dict[str, list[float]] = {c: [] for c in CASES}   # training CPU seconds per step
    sent: dict[str, list[float]] = {c: [] for c in CASES[1:]}   # bytes per refresh after opening
    with tempfile.TemporaryDirectory(prefix="dashboard-cost-") as run_dir, \
            Trainer(model_cfg, train_cfg, corpus, workers=workers, run_dir=run_dir) as tr:
        tr.step()                                   # compile / load kernels
        tr.start()
        wait_steps(tr, 2)
        for k in range(args.rounds):
            order = CASES[k % 3:] + CASES[:k % 3]
            for case in order:
                with Observer(case, tr, Path(run_dir), args.refresh_hz) as observer:
                    tps, step_cpu = measure(tr, args.seconds, observer)
                    cpu[case].append(observer.cpu_share())
                results[case].append(tps)
                train_cpu[case].append(step_cpu)
                if case != CASES[0]:
                    sent[case].append(observer.report["bytes"] / max(1, observer.report["refreshes"]))
                print(f"  {workers} workers, round {k + 1}: {case:<30} {tps:10,.0f} tokens/s, training "
                      f"{step_cpu:.3f} CPU s per step, observer "
                      f"{cpu[case][-1]:.2%} of a core {observer.report or ''}", flush=True)
        tr.stop()
    kb = {case: statistics.median(values) / 1e3 for case, values in sent.items() if values}
    return results, cpu, kb, train_cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cllm-4.5m")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 63])
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the preset's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=20.0, help="length of one measurement")
    p.add_argument("--refresh-hz", type=float, default=3.0)
    p.add_argument("--watch", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.watch:
        return watch(args.watch, args.refresh_hz)
    use_serialising_comms()
    from crystalline.data.corpus import bundled_corpus, load_corpus
    corpus = load_corpus(bundled_corpus())
    table = {}
    for workers in args.workers:
        table[workers] = run_workers(workers, args, corpus)
    print(f"\n{args.preset}, {args.rounds} alternated rounds of {args.seconds:.0f} s, refresh "
          f"{args.refresh_hz:g} Hz; medians\n")
    print("| workers | case | tokens/s | vs no dashboard | median of per-round ratios "
          "| training CPU s per step | vs no dashboard | observer CPU, % of a core | KB sent per refresh |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers, (results, cpu, kb, train_cpu) in table.items():
        base = statistics.median(results[CASES[0]])
        base_cpu = statistics.median(train_cpu[CASES[0]])
        for case in CASES:
            median = statistics.median(results[case])
            ratios = [v / b for v, b in zip(results[case], results[CASES[0]])]
            sent = f"{kb[case]:.1f}" if kb.get(case) is not None else ""
            step_cpu = statistics.median(train_cpu[case])
            print(f"| {workers} | {case} | {median:,.0f} | {median / base:.3f}x | "
                  f"{statistics.median(ratios):.3f}x | {step_cpu:.3f} | {step_cpu / base_cpu:.3f}x | "
                  f"{100 * statistics.median(cpu[case]):.2f} | {sent} |")


if __name__ == "__main__":
    main()
