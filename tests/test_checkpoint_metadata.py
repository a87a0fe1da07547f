"""Checkpoint metadata is validated field by field (a consistent digest does not make a wrong type
right), and a folder passed as a checkpoint is named as one."""

import pytest

from crystalline import Trainer
from crystalline.checkpoint import _digest, load_model, read_checkpoint
from crystalline.cli import main
from crystalline.config import preset
from crystalline.errors import CheckpointError

from test_checkpoint import rewrite_metadata

MODEL_CFG, TRAIN_CFG = preset("tiny")


@pytest.fixture(scope="module")
def checkpoint(shakespeare, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "checkpoint.safetensors"
    with Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=4, eval_interval=0), shakespeare, workers=1) as tr:
        for _ in range(3):
            tr.step()
        tr.save(path)
    return path


@pytest.mark.parametrize("field, value", [
    ("adam_t", "x"), ("adam_t", 4), ("adam_t", -1), ("adam_t", True),
    ("step", 3.7), ("step", "3"), ("step", -1), ("step", 10**13), ("step", None),
    ("skipped_steps", 2.0), ("skipped_steps", 4),
    ("workers", 0), ("workers", 1729), ("workers", 1.5),
    ("sync", "fast"), ("sync", 1),
    ("data_source", 3), ("data_sha256", "abc"), ("data_sha256", None), ("data_sha256", "X" * 64),
    ("data_sha256", "g" * 64), ("digest", 7),
    ("model_config", []), ("train_config", "lr=1"), ("tokenizer", None),
])
def test_a_wrong_type_or_range_is_named(checkpoint, tmp_path, field, value):
    tensors, _ = read_checkpoint(checkpoint)

    def edit(meta):
        meta[field] = value
        if field != "digest":
            meta["digest"] = _digest(tensors, meta)        # consistent: only the field is wrong
    bad = rewrite_metadata(checkpoint, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=f"metadata field {field} = .* is invalid") as e:
        read_checkpoint(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("field, value, expected", [
    ("model_config", [], "a table of ModelConfig fields"),
    ("train_config", "lr=1", "a table of TrainConfig fields"),
    ("tokenizer", None, "a tokenizer description"),
    ("step", -1, "an integer from 0 to 1,000,000,000,000"),
    ("adam_t", 4, "an integer from 0 to the step"),
    ("skipped_steps", 4, "an integer from 0 to the step"),
    ("data_source", 3, "a path (a string)"),
    ("data_sha256", "abc", "a SHA-256 hex digest"),
    ("workers", 0, "an integer from 1 to 1728"),
    ("sync", "fast", '"lock_free" or "model_lock"'),
    ("digest", 7, "a SHA-256 hex digest"),
])
def test_the_refusal_says_what_the_field_must_be(checkpoint, tmp_path, field, value, expected):
    tensors, _ = read_checkpoint(checkpoint)

    def edit(meta):
        meta[field] = value
        if field != "digest":
            meta["digest"] = _digest(tensors, meta)
    bad = rewrite_metadata(checkpoint, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(bad)
    assert str(e.value) == (f"{bad}: metadata field {field} = {value!r} is invalid (expected {expected}); "
                            "the file is damaged: use an earlier checkpoint")


def test_a_valid_checkpoint_passes_every_check(checkpoint):
    meta = read_checkpoint(checkpoint)[1]
    assert (meta["step"], meta["adam_t"], meta["skipped_steps"], meta["workers"]) == (3, 3, 0, 1)
    assert len(meta["data_sha256"]) == 64


def test_a_folder_is_named_as_a_folder(checkpoint, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=f"{checkpoint.parent} is a folder.*pass {checkpoint}$"):
        load_model(checkpoint.parent)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file; pass the path of a "
                                              r"\.safetensors file in it$"):
        read_checkpoint(tmp_path)
    assert main(["sample", "--ckpt", str(checkpoint.parent)]) == 2
    assert f"pass {checkpoint}" in capsys.readouterr().err
