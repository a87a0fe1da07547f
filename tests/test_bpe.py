"""Byte-level BPE through Hugging Face `tokenizers`: round trips on arbitrary Unicode, JSON
(never pickle) save / cache / checkpoint, the CLI, and a training run whose loss falls."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalline.cli import main
from crystalline.data.corpus import bundled_corpus, load_corpus
from crystalline.data.tokenizers import BPETokenizer, load_tokenizer, make_tokenizer
from crystalline.errors import DataError

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune. \u00c9t\u00e9, na\u00efve, \u4e2d\u6587. ") * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, vocab_size=300)


def test_training_learns_merges_deterministically(bpe):
    assert bpe.vocab_size == 300 and bpe.name == "bpe"
    assert len(bpe.encode(TEXT)) < len(TEXT.encode("utf-8")) / 1.5     # merges compress
    assert BPETokenizer.train(TEXT, vocab_size=300).to_json() == bpe.to_json()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_on_arbitrary_unicode(bpe, s):
    ids = bpe.encode(s)
    assert ids.dtype == np.int32 and ((0 <= ids) & (ids < bpe.vocab_size)).all()
    assert bpe.decode(ids) == s


def test_bytes_that_are_not_utf8_become_replacement_characters(bpe):
    assert bpe.decode(bpe.encode_bytes(b"caf\xe9 ok")) == "caf\ufffd ok"
    assert bpe.decode(bpe.encode("a\ud800b")) == "a\ufffd\ufffd\ufffdb"    # a lone surrogate


def test_saved_as_json_and_loaded_back_equal(bpe, tmp_path):
    path = bpe.save(tmp_path / "bpe.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["kind"] == "bpe" and doc["tokenizer"]["model"]["type"] == "BPE"
    assert load_tokenizer(path) == bpe
    hf_path = tmp_path / "tokenizer.json"                     # the Hugging Face file itself
    hf_path.write_text(bpe.hf.to_str(), encoding="utf-8")
    assert make_tokenizer(str(hf_path)) == bpe
    corpus = load_corpus(bundled_corpus(), tokenizer=str(hf_path))
    assert corpus.tokenizer == bpe and corpus.tokens.max() < 300


def test_bad_bpe_files_and_sizes_are_clear_errors(tmp_path):
    wordpiece = tmp_path / "wp.json"
    wordpiece.write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(DataError, match="WordPiece"):
        load_tokenizer(wordpiece)
    with pytest.raises(DataError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(DataError, match="vocabulary size applies"):
        load_corpus(bundled_corpus(), tokenizer="byte", vocab_size=300)


def test_a_corpus_trains_its_bpe_once_then_reads_the_cache(monkeypatch, tmp_path):
    corpus = load_corpus(bundled_corpus(), tokenizer="bpe", vocab_size=300, cache_dir=tmp_path)
    assert corpus.tokenizer.vocab_size == 300 and corpus.tokens.max() < 300
    assert list(tmp_path.glob("*.tokenizer.json"))
    monkeypatch.setattr(BPETokenizer, "train", classmethod(lambda *a, **k: pytest.fail("trained again")))
    again = load_corpus(bundled_corpus(), tokenizer="bpe", vocab_size=300, cache_dir=tmp_path)
    assert again.tokenizer == corpus.tokenizer
    np.testing.assert_array_equal(again.tokens, corpus.tokens)


def test_data_info_prints_bpe_figures(capsys):
    assert main(["data", "info", str(bundled_corpus()), "--tokenizer", "bpe", "--vocab-size", "512"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer:       bpe" in out and "vocabulary size: 512" in out
    tokens = int(out.split("tokens:")[1].split()[0].replace(",", ""))
    per_token = float(out.split("bytes per token:")[1].split()[0])
    assert per_token == pytest.approx(1_115_394 / tokens, abs=1e-3) and per_token > 1.5


def test_training_with_bpe_lowers_the_loss_and_the_checkpoint_samples(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--tokenizer", "bpe", "--vocab-size", "512", "--steps", "60",
                 "--workers", "2", "--run-dir", str(run), "--no-progress", "--sample", "0"]) == 0
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.log(512) - 0.2 < losses[0] and np.mean(losses[-5:]) < losses[0] - 0.7
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run / "checkpoint.safetensors"), "--prompt", "KING:",
                 "--tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("KING:")
    from crystalline.checkpoint import load_model
    _, tokenizer, _ = load_model(run / "checkpoint.safetensors")
    assert tokenizer.name == "bpe" and tokenizer.vocab_size == 512
    assert main(["train", "--resume", str(run / "checkpoint.safetensors"), "--vocab-size", "300"]) == 2
    assert main(["train", "--tokenizer", "sentencepiece", "--steps", "1"]) == 2
    assert "vocab-size cannot apply to --resume" in capsys.readouterr().err
