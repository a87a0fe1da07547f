"""Bad input at the trainer's and sampler's boundary: each a clear error, or handled as documented."""

import json
from pathlib import Path

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.config import preset
from crystalline.data.corpus import load_corpus
from crystalline.errors import ConfigError, DataError
from crystalline.sampling import sample_text

MODEL_CFG, TRAIN_CFG = preset("tiny")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=4, eval_interval=0)
CORPUS = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"


def test_corpus_shorter_than_a_block_is_refused_with_lengths(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("too short")
    with pytest.raises(DataError, match=r"the corpus has 9 tokens, too few for block_size = 32 "
                                        r"\(a sequence needs block_size \+ 1 = 33\)"):
        Trainer(MODEL_CFG, TRAIN_CFG, path, workers=1)


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Trainer(MODEL_CFG, TRAIN_CFG, tmp_path / "nope.txt", workers=1)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        Trainer(MODEL_CFG, TRAIN_CFG, tmp_path / "empty.txt", workers=1)


def test_one_huge_line_trains(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "one_line.txt"
    path.write_bytes(bytes(rng.integers(97, 123, size=2_000_000, dtype=np.uint8)))   # no newline
    with Trainer(MODEL_CFG, TRAIN_CFG, path, workers=2) as tr:
        assert np.isfinite(tr.step().loss)


def test_mixed_encodings_in_a_folder(tmp_path):
    (tmp_path / "a_utf8.txt").write_text("naïve café " * 20, encoding="utf-8")
    (tmp_path / "b_latin1.txt").write_bytes(("façade déjà " * 20).encode("latin-1"))
    (tmp_path / "c_utf16.txt").write_bytes(("wide text " * 20).encode("utf-16"))   # NULs: skipped
    corpus = load_corpus(tmp_path)
    assert corpus.num_files == 2
    with Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=2), corpus, workers=1) as tr:
        assert np.isfinite(tr.step().loss)
    words = load_corpus(tmp_path, tokenizer="word")
    assert "caf\u00e9" in words.tokenizer.decode(words.tokens[:40])     # UTF-8 decoded as such
    assert "\ufffd" in words.tokenizer.decode(words.tokens)             # Latin-1 bytes replaced


def test_squad_corpus_trains(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "Bees", "paragraphs": [{
        "context": "Bees make honey from nectar. " * 10,
        "qas": [{"id": "1", "question": "What do bees make?", "is_impossible": False,
                 "answers": [{"text": "honey", "answer_start": 10}]},
                {"id": "2", "question": "What do wasps make?", "is_impossible": True, "answers": []}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    with Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=2), f"squad:{path}", workers=2) as tr:
        assert np.isfinite(tr.step().loss)
        assert "(no answer)" in tr.corpus.tokenizer.decode(tr.corpus.tokens)


def test_word_tokenizer_trainer_and_prompts(tmp_path, shakespeare):
    with Trainer(MODEL_CFG, TRAIN_CFG, CORPUS, workers=1, tokenizer="word") as tr:
        assert tr.model.config.vocab_size == tr.corpus.tokenizer.vocab_size > 256
        tr.step()
        text = sample_text(tr.model, tr.corpus.tokenizer, "the king", 5, seed=1)
        assert text.startswith("the king")
        with pytest.raises(ConfigError, match="outside the word tokenizer's vocabulary"):
            sample_text(tr.model, tr.corpus.tokenizer, "xyzzyplugh qwertyzzz", 5)
        with pytest.raises(ConfigError, match="prompt is empty"):
            sample_text(tr.model, tr.corpus.tokenizer, "", 5)
        with pytest.raises(ConfigError, match="encodes to no tokens"):
            sample_text(tr.model, tr.corpus.tokenizer, "   ", 5)
        with pytest.raises(ConfigError, match="top_k"):
            sample_text(tr.model, tr.corpus.tokenizer, "the", 5, top_k=0)
