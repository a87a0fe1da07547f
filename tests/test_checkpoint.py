"""Checkpoints: exact resume on 1 and 12 workers, atomic writes, and every bad file refused."""

import json
import pickle
import struct

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.checkpoint import load_model, read_checkpoint
from crystalline.config import preset
from crystalline.errors import CheckpointError

MODEL_CFG, TRAIN_CFG = preset("tiny")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=12, eval_interval=0)


@pytest.mark.parametrize("workers, dropout", [(1, 0.0), (12, 0.0), (3, 0.2)])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(shakespeare, tmp_path, workers, dropout):
    model_cfg = MODEL_CFG.replace(dropout=dropout)     # a resumed run draws the same masks
    with Trainer(model_cfg, TRAIN_CFG, shakespeare, workers=workers) as straight:
        straight_losses = [straight.step().loss for _ in range(6)]
    with Trainer(model_cfg, TRAIN_CFG, shakespeare, workers=workers) as first:
        for _ in range(3):
            first.step()
        first.save(tmp_path / "ckpt.safetensors")
    with Trainer.load(tmp_path / "ckpt.safetensors", corpus=shakespeare) as resumed:
        assert resumed.steps_done == 3 and resumed.workers == workers
        assert resumed.model_cfg.dropout == dropout
        resumed_losses = [resumed.step().loss for _ in range(3)]
    assert resumed_losses == straight_losses[3:]
    assert np.array_equal(resumed.model.params, straight.model.params)
    assert np.array_equal(resumed.optimizer.m, straight.optimizer.m)


@pytest.fixture(scope="module")
def checkpoint(shakespeare, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.safetensors"
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2) as tr:
        tr.step()
        tr.save(path)
    return path


def test_load_model_for_sampling(checkpoint):
    model, tokenizer, meta = load_model(checkpoint)
    assert meta["step"] == 1 and tokenizer.vocab_size == 256
    assert model.num_parameters == read_checkpoint(checkpoint)[0]["params"].shape[0]


def test_save_replaces_atomically_and_leaves_no_temp_file(shakespeare, checkpoint, tmp_path):
    path = tmp_path / "c.safetensors"
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=1) as tr:
        tr.save(path)
        tr.step()
        tr.save(path)
    assert read_checkpoint(path)[1]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def rewrite_metadata(path, out, edit):
    """Copy the checkpoint at `path` to `out` with `edit(meta)` applied to its crystalline metadata."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["crystalline"])
    edit(meta)
    header["__metadata__"]["crystalline"] = json.dumps(meta)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    out.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + n:])
    return out


def test_truncated_file_is_refused(checkpoint, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(checkpoint.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(bad)
    bad.write_bytes(checkpoint.read_bytes()[:5])
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_checkpoint(bad)


def test_tampered_tensor_or_metadata_is_refused(checkpoint, tmp_path):
    flipped = bytearray(checkpoint.read_bytes())
    flipped[-3] ^= 0xFF
    bad = tmp_path / "tensor.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        read_checkpoint(bad)
    bad = rewrite_metadata(checkpoint, tmp_path / "meta.safetensors", lambda meta: meta.update(step=999))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        read_checkpoint(bad)


def test_shape_mismatch_with_config_is_refused(checkpoint, tmp_path):
    from crystalline.checkpoint import _digest
    tensors, _ = read_checkpoint(checkpoint)

    def wrong_config(meta):
        meta["model_config"]["n_layer"] = 3
        meta["digest"] = _digest(tensors, meta)       # consistent digest, wrong config

    bad = rewrite_metadata(checkpoint, tmp_path / "shape.safetensors", wrong_config)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(bad)


def test_a_pickle_is_never_unpickled(tmp_path, monkeypatch):
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"params": np.zeros(3)}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_checkpoint(bad)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not written by crystalline"):
        read_checkpoint(tmp_path / "foreign.safetensors")


def test_load_model_returns_the_saved_parameters(checkpoint):
    model, _, meta = load_model(checkpoint)
    tensors, _ = read_checkpoint(checkpoint)
    assert np.array_equal(model.params, tensors["params"]) and meta["step"] == 1


def test_trainer_load_restores_state_and_step_counter(shakespeare, checkpoint):
    tensors, meta = read_checkpoint(checkpoint)
    with Trainer.load(checkpoint, corpus=shakespeare) as tr:
        assert tr.steps_done == tr.stats.step == meta["step"] == 1 and tr.optimizer.t == meta["adam_t"]
        assert np.array_equal(tr.optimizer.v, tensors["adam_v"]) and tr.sync == "lock_free"
        assert tr.workers == meta["workers"] == 2


def test_a_corpus_missing_here_is_named_with_the_fix(checkpoint, tmp_path):
    from crystalline.checkpoint import _digest
    tensors, _ = read_checkpoint(checkpoint)

    def elsewhere(meta):
        meta["data_source"] = "/no/such/corpus.txt"
        meta["digest"] = _digest(tensors, meta)

    moved = rewrite_metadata(checkpoint, tmp_path / "moved.safetensors", elsewhere)
    from crystalline.errors import DataError
    with pytest.raises(DataError, match=r"^the checkpoint's corpus /no/such/corpus.txt is not on this "
                                        r"machine; pass corpus=PATH \(the same text\) to Trainer.load "
                                        r"or --data to the CLI$"):
        Trainer.load(moved)


def test_refusals_in_full(checkpoint, tmp_path):
    import re
    pickled = tmp_path / "m.pt"
    pickled.write_bytes(pickle.dumps([1]))
    short = tmp_path / "short.safetensors"
    short.write_bytes(checkpoint.read_bytes()[:5])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(checkpoint.read_bytes()[:-1000])
    cases = [
        (tmp_path / "nope.safetensors", "checkpoint {p} does not exist; pass the path of a .safetensors "
         "file written by crystalline (e.g. runs/NAME/checkpoint.safetensors)"),
        (pickled, "{p} looks like a pickle / torch.save file; crystalline never unpickles files. Use a "
         "checkpoint written by crystalline (safetensors)"),
        (short, "{p} is not a safetensors file (bad header); it may be truncated or of another format"),
        (cut, "{p} cannot be read as a safetensors checkpoint ("),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match="^" + re.escape(message.format(p=path))):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"it may be truncated: use an earlier checkpoint$"):
        read_checkpoint(cut)
    version = rewrite_metadata(checkpoint, tmp_path / "v.safetensors", lambda meta: meta.update(version=99))
    with pytest.raises(CheckpointError, match=r": checkpoint format version 99; this crystalline reads "
                                              r"version 1$"):
        read_checkpoint(version)
    extra = rewrite_metadata(checkpoint, tmp_path / "x.safetensors", lambda meta: meta.update(extra=1))
    with pytest.raises(CheckpointError, match=r"metadata is not a crystalline checkpoint's \(fields differ\)$"):
        read_checkpoint(extra)
    wrong = rewrite_metadata(checkpoint, tmp_path / "f.safetensors", lambda meta: meta.update(format="other"))
    with pytest.raises(CheckpointError, match=r"fields differ"):
        read_checkpoint(wrong)
