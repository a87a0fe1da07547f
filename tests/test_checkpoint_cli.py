"""The CLI's promises: exit 2 with one line for every bad checkpoint (truncated, tampered, a
pickle, a torch.save zip) on `sample` and `train --resume`, and the training flags that the README
lists (--sync, --config, --lr, --tokenizer, --data squad:..., --sample 0) really take effect."""

import json
import pickle
import zipfile

import pytest

from reference import warmup_cosine
from crystalline import Trainer
from crystalline.checkpoint import read_checkpoint
from crystalline.cli import main
from crystalline.config import load_toml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run of the tiny preset: its folder."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--steps", "2", "--workers", "1", "--batch-size", "2", "--run-dir", str(out),
                 "--no-progress", "--sample", "0"]) == 0
    return out


def bad_checkpoints(good, folder):
    data = good.read_bytes()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[:len(data) // 2])
    tampered = folder / "tampered.safetensors"
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    tampered.write_bytes(bytes(flipped))
    pickled = folder / "model.pkl"
    pickled.write_bytes(pickle.dumps({"params": [0.0] * 4}))
    torch_zip = folder / "model.pt"               # what torch.save writes: a zip holding a pickle
    with zipfile.ZipFile(torch_zip, "w") as z:
        z.writestr("model/data.pkl", pickle.dumps({"params": [0.0] * 4}))
        z.writestr("model/version", "3\n")
    return {"truncated": (truncated, "truncated"), "tampered": (tampered, "digest mismatch"),
            "pickle": (pickled, "never unpickles"), "torch.save zip": (torch_zip, "never unpickles")}


@pytest.mark.parametrize("kind", ["truncated", "tampered", "pickle", "torch.save zip"])
@pytest.mark.parametrize("command", ["sample", "resume"])
def test_a_bad_checkpoint_is_exit_2_with_one_line(run, tmp_path, capsys, monkeypatch, kind, command):
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    path, message = bad_checkpoints(run / "checkpoint.safetensors", tmp_path)[kind]
    argv = (["sample", "--ckpt", str(path), "--prompt", "ROMEO:"] if command == "sample" else
            ["train", "--resume", str(path), "--steps", "1", "--no-progress", "--run-dir", str(tmp_path / "r")])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def train(tmp_path, *flags):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--workers", "2", "--batch-size", "2", "--run-dir", str(out),
                 "--no-progress", *flags]) == 0
    return out, read_checkpoint(out / "checkpoint.safetensors")[1]


def test_sync_lr_and_sample_0(tmp_path, capsys):
    out, meta = train(tmp_path, "--sync", "model_lock", "--lr", "0.0123", "--sample", "0")
    assert meta["sync"] == "model_lock" and meta["train_config"]["learning_rate"] == 0.0123
    assert load_toml(out / "config.toml")[1].learning_rate == 0.0123
    assert "--- sample" not in capsys.readouterr().out
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    t = meta["train_config"]
    assert lrs == pytest.approx([warmup_cosine(s, 0.0123, t["min_lr"], t["warmup_steps"], t["max_steps"])
                                 for s in (0, 1)])


def test_sample_n_prints_a_sample(tmp_path, capsys):
    train(tmp_path, "--sample", "30")
    out = capsys.readouterr().out
    assert "--- sample" in out and len(out.split("---\n", 2)[-1]) >= 10


def test_config_file(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('preset = "tiny"\n[model]\nn_layer = 1\nn_embd = 48\nn_head = 3\n'
                   '[train]\nweight_decay = 0.05\nseed = 7\n')
    out, meta = train(tmp_path, "--config", str(cfg), "--sample", "0")
    assert meta["model_config"]["n_layer"] == 1 and meta["model_config"]["n_embd"] == 48
    assert meta["train_config"]["weight_decay"] == 0.05 and meta["train_config"]["seed"] == 7
    assert meta["train_config"]["batch_size"] == 2                     # the flag over the file
    model_cfg, train_cfg = load_toml(out / "config.toml")
    assert (model_cfg.n_layer, model_cfg.n_head, train_cfg.seed) == (1, 3, 7)


def test_word_tokenizer(tmp_path):
    _, meta = train(tmp_path, "--tokenizer", "word", "--sample", "0")
    assert meta["tokenizer"]["kind"] == "word"
    assert meta["model_config"]["vocab_size"] > 256


def test_squad_data(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "Bees", "paragraphs": [{
        "context": "Bees make honey from nectar. " * 20,
        "qas": [{"id": "1", "question": "What do bees make?", "is_impossible": False,
                 "answers": [{"text": "honey", "answer_start": 10}]}]}]}]}
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps(doc))
    out, meta = train(tmp_path, "--data", f"squad:{squad}", "--sample", "0")
    assert meta["data_source"] == f"squad:{squad}"
    # the recorded source is a squad: spec, not a path, and loads back without --data
    with Trainer.load(out / "checkpoint.safetensors") as trainer:
        assert trainer.steps_done == 2 and trainer.step().step == 2
