"""Mutation testing of the modules whose numbers matter: how many deliberate bugs the suite catches.

    python benchmarks/mutation.py                       # every module, smallest first
    python benchmarks/mutation.py --only gpt --jobs 2   # one module (self-contained: copies the tree)
    python benchmarks/mutation.py --only checkpoint --again   # re-test only the last survivors
    python benchmarks/mutation.py --only spheres --sample 150  # 150 random mutants: an estimate
    python benchmarks/mutation.py --report              # counts of the last runs, nothing re-run
    python benchmarks/mutation.py --report --diffs      # ... and each survivor's diff

Runs mutmut 3 (`pip install mutmut==3.8.1`) on one module at a time, with only that module's
tests, and prints mutants / tested / killed / survived / timeout / other per module, the share
caught ((killed + timeout + crashed) / tested, "other" being the crashed ones: a test run that
never ends or crashes fails CI too) and the surviving mutants' names (`--diffs` prints each one's diff). Not part of CI: it
takes long.

Each module gets its own work folder outside the repository (default
$TMPDIR/crystalline-mutation/<module>): a copy of crystalline/, tests/, data/ and pyproject.toml
plus a setup.cfg with the [mutmut] section, so mutmut's mutants/ folder and caches never land in
the repository. PYTHONPATH points at the mutated copy, so tests that start a subprocess run the
mutant too.

`--again` copies the current tests/ (and the test selection below) into the work folder and
re-tests only the mutants that survived the last run (tests were added, so a killed mutant stays
killed); after a change to the module itself run it in full. `--sample N` tests N mutants drawn
at random (seed 0), for a machine too slow to test them all; the share caught is then an estimate. A mutant whose tests run past the wall-clock limit
((estimated seconds of its tests + constant) x multiplier, per module below; the sphere tests
hang on a barrier under some mutants) is a timeout.

mutmut does not mutate decorated functions: the Numba kernels (`@njit`: batching.gather_sequences
and every kernel under model/kernels/) and properties are left out; their own tests compare them
with float64 NumPy references and finite differences instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the tests that hold it to its behaviour (pytest node ids relative to the root),
# from the smallest module to the largest. The Trainer-against-PyTorch tests are left out of the
# model modules' runs: they pass alone but fail under mutmut's stats collection after test_model
# (not investigated further); the whole-model parity and finite-difference tests cover them.
MODEL_TESTS = ["tests/test_model.py",
               "tests/test_torch_parity.py::test_loss_logits_and_every_gradient_match_torch",
               "tests/test_torch_parity.py::test_ten_adamw_steps_match_torch",
               "tests/test_torch_parity.py::test_decay_mask_is_the_readmes_list",
               "tests/test_torch_parity.py::test_weight_decay_alone_matches_torch"]
# (timeout multiplier, timeout constant in seconds) of mutmut's wall-clock limit per mutant.
SLOW = (5.0, 30.0)
THREADS = (2.0, 30.0)      # the sphere tests: a hung barrier should cost minutes, not ten
MODULES = {
    "optimizer": ("crystalline/engine/optimizer.py",
                  ["tests/test_optimizer_reference.py", "tests/test_torch_parity.py",
                   "tests/test_faults.py::test_non_finite_gradient_skips_the_step_and_keeps_parameters_finite",
                   "tests/test_limits.py::test_an_update_that_would_overflow_is_skipped_and_parameters_stay_finite",
                   "tests/test_bf16.py::test_each_step_leaves_the_bf16_copy_equal_to_the_new_parameters_rounded",
                   "tests/test_checkpoint.py::test_resume_is_bitwise_identical_to_an_uninterrupted_run"],
                  SLOW),
    "reduce": ("crystalline/engine/reduce.py", ["tests/test_reduce.py", "tests/test_engine.py"], SLOW),
    "layout": ("crystalline/model/layout.py", MODEL_TESTS, SLOW),
    "batching": ("crystalline/data/batching.py",
                 ["tests/test_batching.py", "tests/test_engine.py::test_any_tree_equals_single_thread"],
                 SLOW),
    "checkpoint": ("crystalline/checkpoint.py",
                   ["tests/test_checkpoint.py", "tests/test_checkpoint_metadata.py",
                    "tests/test_checkpoint_cli.py"], SLOW),
    "gpt": ("crystalline/model/gpt.py",
            MODEL_TESTS + ["tests/test_kvcache.py", "tests/test_attention.py",
                           "tests/test_dropout.py", "tests/test_bf16.py"], SLOW),
    # not the straggler tests that time a slowed worker (on a loaded machine their ratios fail
    # on the unmutated code) nor the CLI one (subprocesses)
    "spheres": ("crystalline/engine/spheres.py",
                ["tests/test_engine.py", "tests/test_engine_promises.py", "tests/test_faults.py",
                 "tests/test_balance.py",
                 "tests/test_stragglers.py::test_set_stragglers_between_steps_and_resize"],
                THREADS),
}
# mutmut's exit codes (its stats.py). A test run that crashes (SIGSEGV, SIGKILL) fails too, and so
# does one that ends with pytest's code 2 (interrupted: under a mutant the Ctrl-C tests' SIGINT
# escaped; nobody presses Ctrl-C in these runs): "crashed", caught.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "crashed", -9: "crashed",
          2: "crashed"}


# A pytest plugin for the work folders: mutmut replaces Python's SIGINT handler, and the Trainer
# then leaves Ctrl-C alone (it only takes over from the default handler), so the engine's Ctrl-C
# tests would fail on the unmutated code.
DEFAULT_SIGINT = '''import signal
import threading


def pytest_runtest_setup(item):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
'''


def prepare(workdir: Path, module: str, tests: list[str], timeout: tuple[float, float]) -> None:
    """A fresh copy of the package and its tests in `workdir`, with mutmut's configuration."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for name in ("crystalline", "tests", "data"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    # PYTHONPATH names mutants/ before mutmut creates it: it must exist from the start, or Python
    # caches it as missing and the tests import the unmutated package.
    (workdir / "mutants").mkdir()
    configure(workdir, module, tests, timeout)


def configure(workdir: Path, module: str, tests: list[str], timeout: tuple[float, float]) -> None:
    """setup.cfg's [mutmut] section: the module, its tests, the pytest flags and the timeout."""
    (workdir / "mutants" / "default_sigint.py").write_text(DEFAULT_SIGINT)
    existing = [t for t in tests if (workdir / t.split("::")[0]).exists()]
    selection = "\n    ".join(existing)
    (workdir / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = crystalline\n"
        f"only_mutate = {module}\n"
        "also_copy =\n    data\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -p\n    default_sigint\n    -x\n    -q\n"
        f"timeout_multiplier = {timeout[0]}\n"
        f"timeout_constant = {timeout[1]}\n")


def again(workdir: Path, module: str, tests: list[str], timeout: tuple[float, float],
          jobs: int) -> None:
    """Re-test the last run's survivors with the repository's current tests and selection.

    A new selection makes mutmut forget every verdict; killed and timed-out ones are put back
    afterwards (tests were only added: a mutant a test caught stays caught)."""
    meta = workdir / "mutants" / (module + ".meta")
    before = json.loads(meta.read_text())["exit_code_by_key"]
    _, survivors = counts(workdir, module)
    if not survivors:
        return
    copy_tests(workdir)
    configure(workdir, module, tests, timeout)
    print(f"== {module}: {len(survivors)} survivors again in {workdir}", flush=True)
    mutmut(workdir, "run", "--max-children", str(jobs), *survivors)
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    for name, code in before.items():
        if codes.get(name) is None and STATUS.get(code) in ("killed", "timeout"):
            codes[name] = code
    meta.write_text(json.dumps(data))


def counts(workdir: Path, module: str) -> tuple[dict[str, int], list[str]]:
    """(status -> number of mutants, names of the mutants no test caught) from mutmut's .meta
    file; "no tests" (no selected test calls the function) counts as not caught."""
    meta = workdir / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}, []
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    tally: dict[str, int] = {}
    survivors = []
    for name, code in sorted(exit_codes.items()):
        status = STATUS.get(code, "not run" if code is None else f"other ({code})")
        tally[status] = tally.get(status, 0) + 1
        if status in ("survived", "no tests"):
            survivors.append(name)
    return tally, survivors


def mutmut(workdir: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """mutmut in a work folder, importing the mutated copy."""
    env = dict(os.environ, PYTHONPATH=str(workdir / "mutants"), CRYSTALLINE_SMALL_RUN="1")
    env.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=workdir, env=env,
                          check=False, capture_output=capture, text=True)


def copy_tests(workdir: Path) -> None:
    """Replace the work folder's tests with the repository's current ones. mutmut notices new
    test names only, not what an edited test now calls: its statistics are collected afresh."""
    shutil.rmtree(workdir / "tests")
    shutil.copytree(ROOT / "tests", workdir / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


def sample(workdir: Path, module: str, tests: list[str], timeout: tuple[float, float], jobs: int,
           size: int) -> None:
    """Test `size` mutants drawn at random (seed 0; a smaller sample is a prefix of a larger
    one) with the current tests, on a machine too slow for all: the share caught is then an
    estimate over the tested ones. Reuses the work folder's mutants, statistics and verdicts
    (re-testing the sample's survivors) when they are there."""
    meta = workdir / "mutants" / (module + ".meta")
    if not meta.exists():
        prepare(workdir, module, tests, timeout)
        # generates the mutants and collects the statistics, then stops: no mutant is named so
        mutmut(workdir, "run", "--max-children", str(jobs), "no-such-mutant", capture=True)
    else:
        copy_tests(workdir)
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    drawn = random.Random(0).sample(sorted(codes), min(size, len(codes)))
    # verdicts outside the sample (an earlier, interrupted full run tests the fastest mutants
    # first) would bias the estimate: forget them; the sample's survivors are tested again
    codes.update({name: None for name in set(codes) - set(drawn)})
    codes.update({name: None for name in drawn if STATUS.get(codes[name]) in ("survived", "no tests")})
    meta.write_text(json.dumps(data))
    todo = [name for name in drawn if codes[name] is None]
    print(f"== {module}: {len(todo)} of a sample of {len(drawn)} mutants to test in {workdir}", flush=True)
    if todo:
        mutmut(workdir, "run", "--max-children", str(jobs), *todo)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(MODULES), help="modules to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (mutmut --max-children)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "crystalline-mutation")
    parser.add_argument("--again", action="store_true",
                        help="re-test only the last run's survivors with the current tests")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="test only N mutants drawn at random (seed 0): an estimate")
    parser.add_argument("--report", action="store_true", help="print the last results, run nothing")
    parser.add_argument("--diffs", action="store_true", help="with --report: each survivor's diff")
    args = parser.parse_args(argv)
    if shutil.which("mutmut") is None and not args.report:
        print("mutmut is not installed: pip install mutmut==3.8.1", file=sys.stderr)
        return 2
    names = args.only or list(MODULES)
    rows = []
    for name in names:
        module, tests, timeout = MODULES[name]
        workdir = args.workdir / name
        if args.again and not args.report:
            again(workdir, module, tests, timeout, args.jobs)
        elif args.sample and not args.report:
            sample(workdir, module, tests, timeout, args.jobs, args.sample)
        elif not args.report:
            prepare(workdir, module, tests, timeout)
            print(f"== {module}: mutmut run in {workdir}", flush=True)
            mutmut(workdir, "run", "--max-children", str(args.jobs))
        tally, survivors = counts(workdir, module)
        rows.append((name, module, tally, survivors))
    print(f"\n{'module':34} {'mutants':>7} {'tested':>6} {'killed':>6} {'survived':>8} {'no tests':>8} "
          f"{'timeout':>7} {'other':>5} {'caught %':>8}")
    for name, module, tally, survivors in rows:
        total = sum(tally.values())
        tested = total - tally.get("not run", 0)
        killed, survived, untested, timeout, crashed = (
            tally.get(k, 0) for k in ("killed", "survived", "no tests", "timeout", "crashed"))
        other = tested - killed - survived - untested - timeout
        score = f"{100 * (killed + timeout + crashed) / tested:.1f}" if tested else "-"
        print(f"{module:34} {total:7} {tested:6} {killed:6} {survived:8} {untested:8} {timeout:7} "
              f"{other:5} {score:>8}")
    for name, module, tally, survivors in rows:
        others = {k: v for k, v in tally.items()
                  if k not in ("killed", "survived", "no tests", "timeout", "not run", "crashed")}
        if survivors or others:
            print(f"\n{module}: not caught {len(survivors)}" + (f", other {others}" if others else ""))
            for mutant in survivors:
                if args.diffs:
                    diff = mutmut(args.workdir / name, "show", mutant, capture=True).stdout
                    print("    " + diff.strip().replace("\n", "\n    "))
                else:
                    print(f"    {mutant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
