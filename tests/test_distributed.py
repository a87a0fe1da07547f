"""MPI ranks (crystalline.distributed) under `mpiexec -n 2`: 2 ranks x 1 worker on the tiny preset.

This file is also the MPI program: `mpiexec -n 2 python -m mpi4py tests/test_distributed.py
SCENARIO OUTDIR` runs one scenario on every rank (see SCENARIOS); the tests run it in a
subprocess with a timeout and check what rank 0 wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RANKS = 2
TIMEOUT_S = 90          # any one mpiexec job
FAIL_WITHIN_S = 60      # a raising or hanging rank must end the job within this


# ---------------------------------------------------------------------- the MPI side
def _configs():
    from crystalline.config import preset
    model_cfg, train_cfg = preset("tiny")
    return model_cfg, train_cfg.replace(eval_interval=0)


def _trainer(workers=1, **kw):
    from crystalline.data.corpus import bundled_corpus
    from crystalline.distributed import DistributedTrainer
    return DistributedTrainer(*_configs(), str(bundled_corpus()), workers=workers, **kw)


def scenario_train(out: Path) -> None:
    """3 steps, checkpoint, 2 more steps; rank 0 writes losses and parameters after 3 and 5."""
    tr = _trainer(check_every=1)
    losses = [tr.step().loss for _ in range(3)]
    val = tr.evaluate(2)
    params3 = tr.model.params.copy()
    tr.save(out / "ckpt.safetensors")
    losses += [tr.step().loss for _ in range(2)]
    if tr.is_root:
        np.save(out / "params3.npy", params3)
        np.save(out / "params5.npy", tr.model.params)
        (out / "result.json").write_text(json.dumps({"losses": losses, "val": val}))
    tr.close()


def scenario_graph(out: Path) -> None:
    """Rank 0 has 1 worker, rank 1 has 13 (two levels); one step, then the gathered graph."""
    from networkx.readwrite import json_graph
    from mpi4py import MPI
    tr = _trainer(workers=1 + 12 * MPI.COMM_WORLD.rank)
    loss = tr.step().loss
    graph = tr.to_networkx()
    if tr.is_root:
        (out / "graph.json").write_text(json.dumps({"loss": loss, "graph": json_graph.node_link_data(graph)}))
    tr.close()


def _inject_on_rank_1(tr, at_step: int, action) -> None:
    """Replace rank 1's forward_into so that step `at_step` runs `action` (test-only fault)."""
    if tr.rank != 1:
        return
    forward = tr.model.forward_into

    def faulty(*args, **kw):
        if tr.steps_done == at_step:
            action()
        return forward(*args, **kw)
    tr.model.forward_into = faulty


def _raise():
    raise RuntimeError("injected failure on rank 1")


def scenario_raise(out: Path) -> None:
    """Rank 1 raises in its worker at step 2; run under python -m mpi4py, the job must end."""
    tr = _trainer()
    _inject_on_rank_1(tr, 2, _raise)
    tr.run(5, progress=False)


def scenario_raise_cli(out: Path) -> None:
    """The same fault inside `crystalline train --distributed` (no python -m mpi4py)."""
    from mpi4py import MPI

    from crystalline.cli import main
    from crystalline.model.gpt import GPT
    if MPI.COMM_WORLD.rank == 1:
        forward = GPT.forward_into
        calls = [0]

        def faulty(self, *args, **kw):
            calls[0] += 1
            if calls[0] == 3:
                _raise()
            return forward(self, *args, **kw)
        GPT.forward_into = faulty
    sys.exit(main(["train", "--distributed", "--preset", "tiny", "--workers", "1", "--steps", "5",
                   "--eval-interval", "0", "--run-dir", str(out / "run"), "--no-progress"]))


def scenario_hang(out: Path) -> None:
    """Rank 1 hangs (sleeps) in its worker at step 2; rank 0 gives up after its 3 s timeout."""
    tr = _trainer(timeout=3.0)
    _inject_on_rank_1(tr, 2, lambda: time.sleep(600))
    tr.run(5, progress=False)


def scenario_drift(out: Path) -> None:
    """Rank 1's parameters are nudged after step 1; the next checksum must catch it on every rank."""
    from crystalline.errors import TrainingError
    tr = _trainer(check_every=1)
    tr.step()
    if tr.rank == 1:
        tr.model.params[123] += 1e-3
    try:
        tr.step()
    except TrainingError as e:
        (out / f"drift-{tr.rank}.txt").write_text(str(e))
    tr.close()


def _refused(out: Path, make) -> None:
    """Each rank writes the ConfigError that building its trainer raised (or "built")."""
    from mpi4py import MPI

    from crystalline.errors import ConfigError
    rank = MPI.COMM_WORLD.rank
    try:
        make(rank).close()
        message = "built"
    except ConfigError as e:
        message = str(e)
    (out / f"refused-{rank}.txt").write_text(message)


def scenario_mismatch_config(out: Path) -> None:
    """Rank 1 asks for another learning rate: every rank must refuse to start."""
    from crystalline.data.corpus import bundled_corpus
    from crystalline.distributed import DistributedTrainer
    model_cfg, train_cfg = _configs()
    _refused(out, lambda rank: DistributedTrainer(
        model_cfg, train_cfg.replace(learning_rate=1e-3 * (1 + rank)), str(bundled_corpus()), workers=1))


def scenario_mismatch_corpus(out: Path) -> None:
    """Rank 1 reads another text of the same length: every rank must refuse to start."""
    from crystalline.data.corpus import bundled_corpus
    from crystalline.distributed import DistributedTrainer
    text = Path(bundled_corpus()).read_bytes()
    mine = out / f"corpus-{MPI_rank()}.txt"
    mine.write_bytes(text if MPI_rank() == 0 else text.upper())
    _refused(out, lambda rank: DistributedTrainer(*_configs(), str(mine), workers=1))


def MPI_rank() -> int:
    from mpi4py import MPI
    return MPI.COMM_WORLD.rank


def scenario_broadcast(out: Path) -> None:
    """Rank 1 initialises its model from another seed (a patched init); after the start-up
    broadcast both ranks hold rank 0's parameters, which equal a single process's."""
    import zlib

    from mpi4py import MPI

    from crystalline.model.gpt import GPT
    if MPI_rank() == 1:
        init = GPT._init_weights
        GPT._init_weights = lambda self, seed: init(self, seed + 99)
    tr = _trainer()
    crcs = MPI.COMM_WORLD.allgather(zlib.crc32(tr.model.params.view(np.uint8)))
    if tr.is_root:
        np.save(out / "params0.npy", tr.model.params)
        (out / "broadcast.json").write_text(json.dumps({"crcs": crcs}))
    tr.close()


def scenario_default_checks(out: Path) -> None:
    """Default check_every: the ranks compare checksums after steps 50 and 100, no others."""
    tr = _trainer()
    checked, check = [], tr.check_sync
    tr.check_sync = lambda: (checked.append(tr.steps_done), check())[1]
    tr.run(101, progress=False)
    (out / f"checks-{tr.rank}.json").write_text(json.dumps({"every": tr.check_every, "at": checked}))
    tr.close()


SCENARIOS = {f.__name__.removeprefix("scenario_"): f for f in
             (scenario_train, scenario_graph, scenario_raise, scenario_raise_cli, scenario_hang, scenario_drift,
              scenario_mismatch_config, scenario_mismatch_corpus, scenario_broadcast, scenario_default_checks)}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    sys.exit(0)


# ---------------------------------------------------------------------- the pytest side
import pytest  # noqa: E402 - the MPI side above does not need pytest


def _mpiexec() -> str | None:
    beside_python = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside_python) if beside_python.exists() else None)


def _skip_reason() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside python (pip install mpich)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def mpirun(scenario: str, out: Path, with_mpi4py: bool = True, timeout: float = TIMEOUT_S):
    """Run one scenario on RANKS ranks; returns (exit code, combined output, seconds)."""
    cmd = [_mpiexec(), "-n", str(RANKS), sys.executable] + (["-m", "mpi4py"] if with_mpi4py else []) \
        + [__file__, scenario, str(out)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`{' '.join(cmd)}` did not end within {timeout} s: a rank hung.\n{e.stdout}\n{e.stderr}")
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi-train")
    rc, output, _ = mpirun("train", out)
    assert rc == 0, output
    return out


def _single_process(steps, shakespeare):
    from crystalline import Trainer
    return Trainer(*_configs(), shakespeare, workers=2)


def assert_close_params(got, want):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale, np.abs(got - want).max() / scale


def test_two_ranks_equal_one_process_with_two_workers(trained, shakespeare):
    result = json.loads((trained / "result.json").read_text())
    with _single_process(3, shakespeare) as tr:
        losses = [tr.step().loss for _ in range(3)]
        val = tr.evaluate(2)
        assert_close_params(np.load(trained / "params3.npy"), tr.model.params)
    np.testing.assert_allclose(result["losses"][:3], losses, rtol=1e-6)
    np.testing.assert_allclose(result["val"], val, rtol=1e-6)


def test_two_rank_checkpoint_resumes_in_one_process(trained):
    from crystalline import Trainer
    result = json.loads((trained / "result.json").read_text())
    with Trainer.load(trained / "ckpt.safetensors", workers=2) as tr:
        assert tr.steps_done == 3
        losses = [tr.step().loss for _ in range(2)]
        assert_close_params(tr.model.params, np.load(trained / "params5.npy"))
    np.testing.assert_allclose(losses, result["losses"][3:], rtol=1e-6)


def test_distributed_graph_has_the_ranks_and_their_trees(tmp_path, shakespeare):
    rc, output, _ = mpirun("graph", tmp_path)
    assert rc == 0, output
    from networkx.readwrite import json_graph
    data = json.loads((tmp_path / "graph.json").read_text())
    g = json_graph.node_link_graph(data["graph"])
    assert list(g.successors("cluster")) == ["r0", "r1"]
    assert [g.nodes[r]["workers"] for r in ("r0", "r1")] == [1, 13]
    assert [g.nodes[r]["sequences"] for r in ("r0", "r1")] == [[0, 4], [4, 4]]
    for r, spheres in (("r0", 2), ("r1", 1 + 12 + 13)):
        tree = [n for n in g.nodes if n.startswith(f"{r}:")]
        assert len(tree) == spheres
        assert list(g.successors(r)) == [f"{r}:0"] and g.nodes[f"{r}:0"]["role"] == "node_zero"
    workers = sorted((a["global_worker"], a["rank"], a["group"]) for _, a in g.nodes(data=True)
                     if a["role"] == "worker")
    assert [w[0] for w in workers] == list(range(14))
    assert [w[2] for w in workers if w[1] == 1] == [i % 12 for i in range(13)]   # round-robin groups
    assert all(g.nodes[f"r1:{n}"]["depth"] == 4 for n in range(13, 26))         # workers under controls
    busy = [a["tokens_per_s"] > 0 for _, a in g.nodes(data=True) if a["role"] == "worker"]
    assert busy == [a["sequences"][1] > 0 for _, a in g.nodes(data=True) if a["role"] == "worker"]
    assert sum(busy) == 1 + 4            # rank 1's 4 sequences keep 4 of its 13 workers busy
    with _single_process(1, shakespeare) as tr:          # 1 + 13 workers: other sums, same step
        np.testing.assert_allclose(data["loss"], tr.step().loss, rtol=1e-6)


@pytest.mark.parametrize("scenario, with_mpi4py", [("raise", True), ("raise_cli", False)])
def test_a_raising_rank_ends_the_job_promptly(tmp_path, scenario, with_mpi4py):
    rc, output, seconds = mpirun(scenario, tmp_path, with_mpi4py=with_mpi4py)
    assert rc != 0, output
    assert seconds < FAIL_WITHIN_S
    assert "injected failure on rank 1" in output, output
    if with_mpi4py:
        assert "MPI_Abort" in output or "Abort" in output, output
    else:
        # abort_on_error calls MPI_Abort(2) for a CrystallineError, and mpiexec returns that code
        # (rank 0 would otherwise wait out its 300 s timeout).
        assert rc == 2, output


def test_an_aborting_rank_waits_until_its_message_is_read():
    """What a rank printed is still in its pipe when MPI_Abort kills it unless the abort waits."""
    import os
    from crystalline.distributed import _wait_until_read
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "w") as writer:
        writer.write("crystalline: error: rank 1 of 2: ...\n")
        writer.flush()
        t0 = time.monotonic()
        _wait_until_read([writer], deadline_s=0.3)      # nobody reads: waits out the deadline
        assert time.monotonic() - t0 >= 0.3
        reader.read1(1 << 16)
        t0 = time.monotonic()
        _wait_until_read([writer], deadline_s=5.0)      # all read: returns at once
        _wait_until_read([object()], deadline_s=5.0)    # no file descriptor: nothing to wait for
        assert time.monotonic() - t0 < 1.0


def test_a_hanging_rank_times_out_on_the_others(tmp_path):
    rc, output, seconds = mpirun("hang", tmp_path)
    assert rc != 0, output
    assert seconds < FAIL_WITHIN_S
    assert "rank 0 of 2 waited" in output and "gradient all-reduce of step 2" in output, output


def test_checksum_catches_a_drifted_rank_on_every_rank(tmp_path):
    rc, output, _ = mpirun("drift", tmp_path)
    assert rc == 0, output
    for rank in range(RANKS):
        message = (tmp_path / f"drift-{rank}.txt").read_text()
        assert "MPI ranks [1] have drifted from rank 0" in message


def test_batch_smaller_than_ranks_is_a_clear_error(tmp_path):
    cmd = [_mpiexec(), "-n", str(RANKS), sys.executable, "-m", "crystalline", "train", "--distributed",
           "--batch-size", "1", "--steps", "1", "--workers", "1", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2
    assert "batch_size = 1 is smaller than the 2 MPI ranks" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("scenario, key", [("mismatch_config", "train"),
                                           ("mismatch_corpus", "corpus crc32")])
def test_ranks_refuse_mismatched_configs_or_corpora(tmp_path, scenario, key):
    rc, output, _ = mpirun(scenario, tmp_path)
    assert rc == 0, output
    for rank in range(RANKS):
        message = (tmp_path / f"refused-{rank}.txt").read_text()
        assert message.startswith(f"MPI ranks [1] disagree with rank 0 on the {key} ("), message
        assert "every rank must get the same config, corpus and tokenizer" in message


def test_rank_0s_parameters_are_broadcast_at_start(tmp_path):
    from crystalline.model.gpt import GPT
    rc, output, _ = mpirun("broadcast", tmp_path)
    assert rc == 0, output
    crcs = json.loads((tmp_path / "broadcast.json").read_text())["crcs"]
    assert len(crcs) == RANKS and len(set(crcs)) == 1
    model_cfg, train_cfg = _configs()
    own = GPT(model_cfg, seed=train_cfg.seed).params        # rank 0's: the config's seed
    np.testing.assert_array_equal(np.load(tmp_path / "params0.npy"), own)


def test_the_default_checksum_interval_is_50_steps(tmp_path):
    rc, output, _ = mpirun("default_checks", tmp_path, timeout=3 * TIMEOUT_S)
    assert rc == 0, output
    for rank in range(RANKS):
        result = json.loads((tmp_path / f"checks-{rank}.json").read_text())
        assert result == {"every": 50, "at": [50, 100]}, result


def test_only_rank_0_writes_and_prints(tmp_path):
    from crystalline.checkpoint import read_checkpoint
    run = tmp_path / "run"
    cmd = [_mpiexec(), "-n", str(RANKS), sys.executable, "-m", "crystalline", "train", "--distributed",
           "--steps", "3", "--workers", "1", "--ckpt-interval", "1", "--run-dir", str(run),
           "--sample", "20", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("--- sample") == 1, proc.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 3
    assert not [p for p in tmp_path.iterdir() if p != run]           # nothing beside the run folder


def test_graph_and_drawing_without_mpi():
    from crystalline.distributed import distributed_graph, rank_slices
    from crystalline.viz.cluster import draw_distributed
    from crystalline.errors import ConfigError
    g = distributed_graph([2, 3], batch_size=7)
    assert [g.nodes[f"r{k}"]["sequences"] for k in range(2)] == [(0, 4), (4, 3)]
    assert [g.nodes[f"r1:{i}"]["sequences"] for i in (1, 2, 3)] == [(4, 1), (5, 1), (6, 1)]
    ax = draw_distributed(g)
    assert len(ax.collections) >= 2 and "2 MPI ranks, 5 workers" in ax.get_title()
    with pytest.raises(ConfigError, match="at least 3"):
        rank_slices(2, 3)
