"""`crystalline train --resume`: flags that would change the run are refused, the others applied and
recorded; a different corpus is refused unless --data-changed-ok. `--steps` sets a new run's
learning-rate schedule (checked against the formula written out here)."""

import json
import math
import shutil

import pytest

from crystalline.checkpoint import _digest, read_checkpoint
from crystalline.cli import build_parser, main
from crystalline.commands import train
from crystalline.config import load_toml
from crystalline.engine.optimizer import learning_rate

from test_checkpoint import rewrite_metadata


def cosine_schedule(step, peak, floor, warmup, total):
    """Linear warm-up to `peak` over `warmup` steps, then half a cosine down to `floor` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return floor
    return floor + (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from crystalline.data.corpus import bundled_corpus
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_bytes(bundled_corpus().read_bytes()[:200_000])
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    """A tiny run of 4 steps (its schedule: 4 steps) on `corpus`."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", str(corpus), "--steps", "4", "--workers", "1", "--run-dir", str(run),
                 "--no-progress", "--sample", "0"]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def resume(run, *flags):
    return main(["train", "--resume", str(run / "checkpoint.safetensors"), "--no-progress",
                 "--sample", "0", *flags])


@pytest.mark.parametrize("flags, named", [
    (["--preset", "small"], "--preset"),
    (["--preset", "tiny"], "--preset"),          # the checkpoint holds its config, whatever it is
    (["--tokenizer", "word"], "--tokenizer word"),
    (["--batch-size", "4"], "--batch-size 4"),
    (["--seed", "7"], "--seed 7"),
    (["--lr", "0.01"], "--lr 0.01"),
    (["--max-steps", "50"], "--max-steps 50"),
    (["--dropout", "0.1"], "--dropout 0.1"),
])
def test_flags_that_would_change_the_run_are_refused(run, flags, named, capsys):
    before = (run / "checkpoint.safetensors").read_bytes(), (run / "metrics.jsonl").read_bytes()
    assert resume(run, "--steps", "2", *flags) == 2
    err = capsys.readouterr().err
    assert named in err and "cannot change a resumed run" in err and err.count("\n") == 1, err
    assert ((run / "checkpoint.safetensors").read_bytes(), (run / "metrics.jsonl").read_bytes()) == before


def test_config_file_is_refused(run, tmp_path, capsys):
    (tmp_path / "run.toml").write_text("[train]\nbatch_size = 8\n")
    assert resume(run, "--steps", "1", "--config", str(tmp_path / "run.toml")) == 2
    assert "--config cannot change a resumed run" in capsys.readouterr().err


def test_same_values_and_changeable_flags_are_applied_and_recorded(run, capsys):
    assert resume(run, "--steps", "3", "--batch-size", "8", "--seed", "0", "--tokenizer", "byte",
                  "--lr", "0.003", "--eval-interval", "1", "--workers", "2") == 0
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["step"] == 7 and meta["workers"] == 2
    assert meta["train_config"]["eval_interval"] == 1 and meta["train_config"]["max_steps"] == 4
    assert load_toml(run / "config.toml")[1].eval_interval == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(7))
    assert all("val_loss" in r for r in records[4:])           # eval every step from now on
    assert "validation loss" in capsys.readouterr().out


def test_a_finished_schedule_needs_steps(run, capsys):
    assert resume(run) == 2
    assert "finished its schedule (step 4 of max_steps 4); pass --steps N" in capsys.readouterr().err


def test_a_different_corpus_is_refused_unless_meant(run, corpus, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_bytes(corpus.read_bytes()[:150_000])
    assert resume(run, "--steps", "1", "--data", str(other)) == 2
    err = capsys.readouterr().err
    assert "differs from the one" in err and "--data-changed-ok" in err
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 4

    moved = tmp_path / "moved.txt"                 # the same bytes at another path: fine
    shutil.copy(corpus, moved)
    assert resume(run, "--steps", "1", "--data", str(moved)) == 0

    assert resume(run, "--steps", "1", "--data", str(other), "--data-changed-ok") == 0
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["step"] == 6 and meta["data_source"] == str(other)
    import hashlib
    assert meta["data_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_a_corpus_changed_in_place_is_refused(run, tmp_path, capsys):
    source = tmp_path / "edited.txt"
    shutil.copy(read_checkpoint(run / "checkpoint.safetensors")[1]["data_source"], source)
    assert resume(run, "--steps", "1", "--data", str(source), "--data-changed-ok") == 0   # now on `source`
    with open(source, "ab") as f:
        f.write(b"one more line\n")
    assert resume(run, "--steps", "1") == 2           # no --data: the checkpoint's path, new bytes
    assert "differs from the one" in capsys.readouterr().err


def test_a_checkpoint_without_a_corpus_hash_resumes_with_a_warning(run, capsys):
    ckpt = run / "checkpoint.safetensors"
    tensors, _ = read_checkpoint(ckpt)

    def legacy(meta):
        del meta["data_sha256"]
        meta["digest"] = _digest(tensors, meta)
    rewrite_metadata(ckpt, run / "legacy.safetensors", legacy)
    (run / "legacy.safetensors").replace(ckpt)
    assert "data_sha256" not in read_checkpoint(ckpt)[1]
    assert resume(run, "--steps", "1") == 0
    assert "predates corpus hashes" in capsys.readouterr().err
    assert "data_sha256" in read_checkpoint(ckpt)[1]


# ----------------------------------------------------------------------------- --steps and the schedule
def parsed(*argv):
    return build_parser().parse_args(["train", *argv])


def test_the_readme_command_reaches_the_peak_and_decays_to_the_floor_by_its_last_step():
    _, cfg = train._configs(parsed("--preset", "small", "--steps", "600"))
    assert (cfg.max_steps, cfg.warmup_steps, cfg.learning_rate, cfg.min_lr) == (600, 50, 2e-3, 2e-4)
    lrs = [learning_rate(s, cfg) for s in range(600)]
    expected = [cosine_schedule(s, 2e-3, 2e-4, 50, 600) for s in range(600)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert max(lrs) == pytest.approx(2e-3) and lrs.index(max(lrs)) == 49
    assert lrs[-1] - 2e-4 < 1e-5 * (2e-3 - 2e-4)                # the last step runs at the floor
    assert all(a >= b for a, b in zip(lrs[49:], lrs[50:]))


def test_max_steps_sets_the_schedule_apart_and_a_too_long_warmup_shrinks():
    assert train._configs(parsed("--steps", "100", "--max-steps", "1000"))[1].max_steps == 1000
    assert train._configs(parsed("--max-steps", "300"))[1].max_steps == 300
    assert train._configs(parsed())[1].max_steps == 200                 # tiny's own schedule
    _, short = train._configs(parsed("--steps", "5"))                   # tiny warms up over 10
    assert (short.max_steps, short.warmup_steps) == (5, 0)
    assert learning_rate(0, short) == short.learning_rate               # the peak is reached


def test_steps_sets_the_schedule_end_to_end(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--steps", "15", "--workers", "1", "--run-dir", str(run),
                 "--no-progress", "--sample", "0", "--eval-interval", "0"]) == 0
    out = capsys.readouterr().out
    assert "cosine to 0.0003 at step 15 (max_steps)" in out
    summary = next(line for line in out.splitlines() if line.startswith("done at step 15"))
    assert "validation loss" in summary                           # measured at the end
    assert load_toml(run / "config.toml")[1].max_steps == 15
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([cosine_schedule(s, 3e-3, 3e-4, 10, 15) for s in range(15)], rel=1e-12)
    assert lrs[9] == pytest.approx(3e-3)
