"""Checkpoints: exact resume on 1 and 12 workers, atomic writes, and every bad file refused."""

import json
import pickle
import re
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


def test_trainer_load_takes_the_sync_mode_asked_for(shakespeare, checkpoint):
    with Trainer.load(checkpoint, corpus=shakespeare, sync="model_lock") as tr:
        assert tr.sync == "model_lock"


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


def digest_written_here(tensors, meta):
    """The checkpoint's digest as documented: SHA-256 over params, adam_m and adam_v, then the
    metadata without "digest" as JSON with sorted keys."""
    import hashlib
    h = hashlib.sha256()
    for name in ("params", "adam_m", "adam_v"):
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def rewrite_tensors(path, out, tensors):
    """Copy the checkpoint at `path` to `out` with other tensors and a digest consistent with them."""
    from safetensors.numpy import save_file
    _, meta = read_checkpoint(path)
    meta["digest"] = digest_written_here(tensors, meta)
    save_file(tensors, str(out), metadata={"crystalline": json.dumps(meta)})
    return out


def test_the_digest_does_not_depend_on_the_order_of_the_metadata_keys(checkpoint, tmp_path):
    def reverse(meta):
        items = list(meta.items())[::-1]
        meta.clear()
        meta.update(items)

    tampered = rewrite_metadata(checkpoint, tmp_path / "t.safetensors", lambda meta: meta.update(step=2))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tampered)
    assert str(e.value) == (f"{tampered}: digest mismatch: the file was modified or corrupted after it "
                            "was written; use an earlier checkpoint")
    reordered = rewrite_metadata(checkpoint, tmp_path / "r.safetensors", reverse)
    assert list(read_checkpoint(reordered)[1]) == list(read_checkpoint(checkpoint)[1])[::-1]
    tensors, meta = read_checkpoint(checkpoint)
    assert meta["digest"] == digest_written_here(tensors, meta)


def test_tensors_that_are_not_float32_vectors_are_refused_with_a_consistent_digest(checkpoint, tmp_path):
    tensors, _ = read_checkpoint(checkpoint)
    n = tensors["params"].shape[0]
    wide = rewrite_tensors(checkpoint, tmp_path / "f64.safetensors",
                           dict(tensors, params=tensors["params"].astype(np.float64)))
    flat = tensors["adam_m"]
    square = rewrite_tensors(checkpoint, tmp_path / "2d.safetensors",
                             dict(tensors, adam_m=flat.reshape(2, n // 2) if n % 2 == 0 else flat[None, :]))
    for path, found in ((wide, f"'params': ('float64', ({n},))"), (square, "'adam_m': ('float32', (")):
        with pytest.raises(CheckpointError, match="^" + re.escape(
                f"{path}: expected float32 vectors ['params', 'adam_m', 'adam_v'], found ") + ".*"
                + re.escape(found)):
            read_checkpoint(path)


@pytest.mark.parametrize("name", ["params", "adam_m", "adam_v"])
def test_non_finite_tensors_are_refused_though_the_digest_agrees(checkpoint, tmp_path, name):
    """The optimizer proves its steps finite only from finite parameters (and finite moments),
    so a file holding an inf or a NaN is refused at the boundary."""
    tensors, _ = read_checkpoint(checkpoint)
    bad = tensors[name].copy()
    bad[[1, 4]] = [np.inf, np.nan]
    path = rewrite_tensors(checkpoint, tmp_path / "inf.safetensors", dict(tensors, **{name: bad}))
    counts = {k: 2 if k == name else 0 for k in ("params", "adam_m", "adam_v")}
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path}: non-finite values {counts}; ")):
        read_checkpoint(path)


def test_a_file_with_a_foreign_header_is_named_before_parsing(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_bytes(b"just some text, certainly not a safetensors header\n" * 4)
    with pytest.raises(CheckpointError, match=f"^{text} is not a safetensors file \\(bad header\\)"):
        read_checkpoint(text)


def test_metadata_that_is_not_json_is_named(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["crystalline"] = "{not json"
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    bad = tmp_path / "j.safetensors"
    bad.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + n:])
    with pytest.raises(CheckpointError, match=f"^{bad}: metadata is not valid JSON \\("):
        read_checkpoint(bad)


def test_bad_configs_sizes_and_tokenizers_name_the_file_in_both_loaders(shakespeare, checkpoint, tmp_path):
    from crystalline.checkpoint import load_trainer
    tensors, _ = read_checkpoint(checkpoint)

    def edited(name, edit):
        def apply(meta):
            edit(meta)
            meta["digest"] = digest_written_here(tensors, meta)
        return rewrite_metadata(checkpoint, tmp_path / name, apply)

    bad_config = edited("c.safetensors", lambda meta: meta["model_config"].update(n_layer=0))
    bigger = edited("s.safetensors", lambda meta: meta["model_config"].update(n_layer=3))
    bad_tokenizer = edited("t.safetensors", lambda meta: meta.update(tokenizer={"kind": "nonsense"}))
    for load in (load_model, lambda p: load_trainer(Trainer, p, corpus=shakespeare)):
        with pytest.raises(CheckpointError, match=f"^{bad_config}: invalid config in metadata: .*n_layer"):
            load(bad_config)
        with pytest.raises(CheckpointError, match=f"^{bigger}: tensor sizes .* do not match the .* "
                                                  "parameters its model config needs$"):
            load(bigger)
    with pytest.raises(CheckpointError, match=f"^{bad_tokenizer}: invalid tokenizer in metadata: "):
        load_model(bad_tokenizer)


def test_load_trainer_defaults_reread_the_corpus_with_the_saved_tokenizer(tmp_path):
    """No corpus: the checkpoint's own source, encoded with the checkpoint's tokenizer (a word
    tokenizer here, which the byte default would not reproduce), cached in cache_dir."""
    from crystalline.checkpoint import load_trainer
    words = ["the", "king", "and", "queen", "of", "all", "this", "land", "shall", "speak"]
    source = tmp_path / "words.txt"
    source.write_text(" ".join(words[(i * 7) % 10] for i in range(3000)))
    path = tmp_path / "w.safetensors"
    with Trainer(MODEL_CFG, TRAIN_CFG, str(source), workers=1, tokenizer="word") as tr:
        tr.step()
        tr.save(path)
        saved_tokenizer = tr.corpus.tokenizer.to_dict()
    cache, run = tmp_path / "cache", tmp_path / "run"
    with load_trainer(Trainer, path, cache_dir=cache, run_dir=run) as tr:
        assert tr.sync == "lock_free" and tr.steps_done == 1 and tr.run_dir == run
        assert tr.corpus.tokenizer.to_dict() == saved_tokenizer and tr.corpus.tokenizer.vocab_size < 256
        assert any(cache.rglob("*")), "cache_dir was not used"


def test_a_failed_write_is_a_write_error_naming_the_path_and_the_fix(checkpoint, tmp_path, monkeypatch):
    import errno

    from safetensors import SafetensorError

    import crystalline.checkpoint as ckpt
    from crystalline.errors import WriteError

    def full(*args, **kwargs):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    target = tmp_path / "c.safetensors"
    with Trainer.load(checkpoint) as tr:
        with pytest.raises(WriteError) as e:
            ckpt.save_checkpoint(target, tr)
    assert e.value.errno == errno.EIO
    assert str(e.value) == (f"cannot write checkpoint {target}: No space left on device (os error 28); "
                            "free some space or write elsewhere (any previous c.safetensors is intact)")
    assert not target.exists()


def test_a_header_length_whose_first_byte_is_0x80_is_not_taken_for_a_pickle(checkpoint, tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 for one
    header length in 32 (lengths are multiples of 8). Such a checkpoint loads."""
    data = checkpoint.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(json.loads(data[8:8 + n])).encode()
    header += b" " * ((0x80 - len(header)) % 256)
    assert len(header) % 256 == 0x80
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])
    assert odd.read_bytes()[:1] == b"\x80"
    tensors, meta = read_checkpoint(odd)
    assert np.array_equal(tensors["params"], read_checkpoint(checkpoint)[0]["params"]) and meta["step"] == 1
