"""`crystalline train` and `crystalline sample` end to end on the tiny preset."""

import json
import os
import signal
import subprocess
import sys

import pytest

from crystalline.checkpoint import read_checkpoint
from crystalline.cli import main


def test_train_writes_a_run_folder_then_resumes_and_samples(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--steps", "12", "--workers", "2", "--run-dir", str(run),
                 "--ckpt-interval", "5", "--no-progress"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(12))
    assert "[model]" in (run / "config.toml").read_text()
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 12
    assert "--- sample" in capsys.readouterr().out

    assert main(["train", "--resume", str(run / "checkpoint.safetensors"), "--steps", "3",
                 "--no-progress"]) == 0
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 15
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 15

    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run / "checkpoint.safetensors"), "--prompt", "ROMEO:",
                 "--tokens", "20", "--top-k", "5"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "huge"], "unknown preset"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--workers", "0", "--steps", "1"], "workers"),
    (["train", "--batch-size", "-2", "--steps", "1"], "batch_size"),
    (["train", "--dropout", "1", "--steps", "1"], "ModelConfig.dropout = 1.0"),
    (["train", "--dropout", "nan", "--steps", "1"], "ModelConfig.dropout = nan"),
    (["train", "--data", "/no/such/corpus.txt", "--steps", "1"], "does not exist"),
    (["sample", "--ckpt", "/no/such.safetensors"], "does not exist"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_prompts_are_clear_errors(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--steps", "1", "--workers", "1", "--run-dir", str(run), "--no-progress"])
    ckpt = str(run / "checkpoint.safetensors")
    assert main(["sample", "--ckpt", ckpt, "--prompt", ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["sample", "--ckpt", ckpt, "--temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert "--temperature 0.0 is invalid" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert main(["sample", "--ckpt", str(run), "--prompt", "x"]) == 2      # the run folder itself
    assert f"is a folder, not a checkpoint file; pass {ckpt}" in capsys.readouterr().err


def test_ctrl_c_writes_a_final_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "crystalline", "train", "--preset", "tiny",
                             "--steps", "100000", "--workers", "2", "--run-dir", str(run),
                             "--ckpt-interval", "1000000"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in iter(proc.stderr.readline, ""):      # the bar has started: training is on
        if "loss=" in line or "step/s" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["step"] >= 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) in (meta["step"], meta["step"] - 1)
