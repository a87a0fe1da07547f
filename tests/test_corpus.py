"""Corpora from a file, a folder (binary files skipped by content) and squad:; the token cache."""

import json
import os

import numpy as np
import pytest

from crystalline import io
from crystalline.data import cache
from crystalline.data.cache import cache_key, cached_encode, default_cache_dir, read_entry
from crystalline.data.corpus import bundled_corpus, corpus_info, is_text, load_corpus
from crystalline.data.tokenizers import ByteTokenizer, WordTokenizer
from crystalline.errors import DataError

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def test_text_file_is_used_byte_for_byte(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("héllo\nworld".encode())             # no trailing newline: kept as is
    corpus = load_corpus(path, cache_dir=tmp_path / "cache")
    assert corpus.tokens.dtype == np.int32 and corpus.tokens.ndim == 1
    assert corpus.tokens.tolist() == list(path.read_bytes())
    assert (corpus.num_bytes, corpus.num_files, corpus.source) == (12, 1, str(path))
    assert isinstance(corpus.tokenizer, ByteTokenizer) and len(corpus) == 12


def test_folder_is_recursive_sorted_and_skips_binary_files_by_content(tmp_path):
    root = tmp_path / "texts"
    (root / "b_dir" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"first")
    (root / "b_dir" / "deeper" / "c.md").write_bytes(b"third\n")
    (root / "b_dir" / "b.dat").write_bytes(b"second\n")          # text with an odd extension: used
    (root / "image.txt").write_bytes(PNG_HEAD)                      # binary named .txt: skipped
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))   # not UTF-8, but text
    (root / ".hidden").write_bytes(b"secret\n")
    (root / "empty.txt").write_bytes(b"")
    corpus = load_corpus(root, cache_dir=tmp_path / "cache")
    expected = b"first\n" + b"second\n" + b"third\n" + "caf\xe9 cr\xe8me\n".encode("latin-1")
    assert corpus.tokens.tolist() == list(expected)
    assert corpus.num_files == 5 and corpus.num_bytes == len(expected)   # empty.txt counts, adds nothing


def test_binary_rule():
    assert is_text(b"") and is_text(b"plain\ttext\r\n")
    assert is_text("ünïcödé ✓".encode()) and is_text("aé".encode()[:2])   # cut at the end
    assert is_text(("x" * 8191 + "é").encode())            # a character cut at 8 KiB is fine
    assert not is_text(b"text\0with a NUL")
    assert not is_text(bytes(range(1, 256)) * 4)            # no NUL, not UTF-8, 10% control bytes
    assert is_text("café crème".encode("cp1252"))            # legacy-encoded text is kept
    assert not is_text(b"\xe9" + b"\x01\x02\x03" + b"abcdefghijklmnop")   # 3 control bytes in 20


def test_folder_without_text_files(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.bin").write_bytes(PNG_HEAD)
    with pytest.raises(DataError, match=r"no text files \(skipped: 1 binary\)"):
        load_corpus(tmp_path / "only", cache_dir=tmp_path / "cache")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no text files"):
        load_corpus(tmp_path / "none", cache_dir=tmp_path / "cache")


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt", cache_dir=tmp_path / "cache")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_corpus(tmp_path / "empty.txt", cache_dir=tmp_path / "cache")
    (tmp_path / "blank.txt").write_bytes(b"  \n\t\n")
    with pytest.raises(DataError, match="is empty"):                 # no words for a word tokenizer
        load_corpus(tmp_path / "blank.txt", tokenizer="word", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="unknown tokenizer"):
        load_corpus(tmp_path / "blank.txt", tokenizer="sentencepiece", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="squad"):
        load_corpus("squad:" + str(tmp_path / "missing.json"), cache_dir=tmp_path / "cache")


def test_squad_source(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [{"context": "C.", "qas": [
        {"question": "Q?", "answers": [{"text": "A", "answer_start": 0}]}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(doc), encoding="utf-8")
    corpus = load_corpus(f"squad:{tmp_path / 's.json'}", cache_dir=tmp_path / "cache")
    assert corpus.tokenizer.decode(corpus.tokens) == "Title: T\nContext: C.\nQuestion: Q?\nAnswer: A\n"
    assert corpus.num_files == 1 and corpus.source.startswith("squad:")


def test_word_tokenizer_corpus(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"The cat the DOG caf\xe9\n")
    corpus = load_corpus(tmp_path / "w.txt", tokenizer="word", cache_dir=tmp_path / "cache")
    assert isinstance(corpus.tokenizer, WordTokenizer)
    assert corpus.tokenizer.decode(corpus.tokens) == "the cat the dog caf\ufffd"
    given = WordTokenizer.train("dog")
    again = load_corpus(tmp_path / "w.txt", tokenizer=given, cache_dir=tmp_path / "cache")
    assert again.tokenizer is given and given.decode(again.tokens) == "<unk> <unk> <unk> dog <unk>"
    from_file = load_corpus(tmp_path / "w.txt", tokenizer=given.save(tmp_path / "dog.json"),
                            cache_dir=tmp_path / "cache")
    assert from_file.tokenizer == given and from_file.tokens.tolist() == again.tokens.tolist()


def test_split_is_a_contiguous_deterministic_tail(tmp_path):
    (tmp_path / "a.txt").write_bytes(bytes(range(32, 132)))
    corpus = load_corpus(tmp_path / "a.txt", cache_dir=tmp_path / "cache")
    train, val = corpus.split(0.1)
    assert len(train) == 90 and len(val) == 10
    assert np.concatenate([train, val]).tolist() == corpus.tokens.tolist()
    assert [len(part) for part in corpus.split(0)] == [100, 0]
    for bad in (1, -0.1, "0.1", True):
        with pytest.raises(DataError, match="val_fraction"):
            corpus.split(bad)


def test_second_load_reads_the_cache_and_a_changed_file_gets_a_new_key(tmp_path, monkeypatch):
    path, cache_dir = tmp_path / "a.txt", tmp_path / "cache"
    path.write_bytes(b"some text\n" * 50)
    first = load_corpus(path, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.tokens"))) == 1

    def no_encoding(self, data):
        raise AssertionError("encoded again instead of reading the cache")
    monkeypatch.setattr(ByteTokenizer, "encode_bytes", no_encoding)
    second = load_corpus(path, cache_dir=cache_dir)
    assert not second.tokens.flags.writeable
    assert second.tokens.tolist() == first.tokens.tolist()

    path.write_bytes(b"other text\n" * 50)
    with pytest.raises(AssertionError, match="encoded again"):
        load_corpus(path, cache_dir=cache_dir)
    monkeypatch.undo()
    load_corpus(path, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.tokens"))) == 2
    assert not list(cache_dir.glob(".*"))                            # no temp files left


def test_cache_key_depends_on_content_and_tokenizer():
    byte = ByteTokenizer()
    assert cache_key(b"abc", byte) == cache_key(b"abc", ByteTokenizer())
    assert cache_key(b"abc", byte) != cache_key(b"abd", byte)
    assert cache_key(b"abc", WordTokenizer.train("a")) != cache_key(b"abc", WordTokenizer.train("b"))


def test_a_broken_cache_entry_is_rebuilt(tmp_path):
    data, tok = b"abcdef" * 10, ByteTokenizer()
    entry = tmp_path / f"{cache_key(data, tok)}.tokens"
    entry.write_bytes(b"\x93NUMPY half a file")
    with pytest.warns(UserWarning, match="damaged"):
        assert cached_encode(data, tok, tmp_path).tolist() == list(data)
    assert read_entry(entry, 256).tolist() == list(data)


def test_a_crash_mid_write_leaves_no_file(tmp_path):
    def crash(f):
        f.write(b"partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "x.npy", crash)
    assert list(tmp_path.iterdir()) == []
    io.atomic_write_bytes(tmp_path / "x.bin", b"whole")
    assert (tmp_path / "x.bin").read_bytes() == b"whole"
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~io._UMASK   # not mkstemp's 0600


def test_unwritable_cache_warns_and_still_returns_tokens(tmp_path, monkeypatch):
    def refuse(path, write):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(cache, "atomic_write", refuse)
    with pytest.warns(UserWarning, match="could not write the token cache"):
        tokens = cached_encode(b"xyz", ByteTokenizer(), tmp_path)
    assert tokens.tolist() == [120, 121, 122]


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALLINE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CRYSTALLINE_CACHE")
    assert default_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "crystalline"


def test_bundled_corpus_and_info(tmp_path, monkeypatch):
    path = bundled_corpus()
    assert path.name == "tinyshakespeare.txt" and path.stat().st_size == 1115394
    info = corpus_info(path, cache_dir=tmp_path / "cache")
    assert info == {"source": str(path), "files": 1, "bytes": 1115394, "tokens": 1115394,
                    "vocab_size": 256, "tokenizer": "byte"}
    import crystalline
    monkeypatch.setattr(crystalline, "__file__", str(tmp_path / "pkg" / "__init__.py"))
    with pytest.raises(DataError, match="bundled corpus .* is missing"):
        bundled_corpus()


def test_default_cache_dir_is_used_when_none_is_given(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello")
    load_corpus(tmp_path / "a.txt")
    assert len(list(default_cache_dir().glob("*.tokens"))) == 1     # the per-test cache (conftest)
    assert os.environ["CRYSTALLINE_CACHE"] != str(__import__("pathlib").Path.home() / ".cache" / "crystalline")


def test_word_vocabulary_is_trained_once_per_text(tmp_path, monkeypatch):
    from crystalline.data.tokenizers import WordTokenizer as Words
    (tmp_path / "w.txt").write_text("b a b c\n")
    first = load_corpus(tmp_path / "w.txt", tokenizer="word", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.tokenizer.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reading the cache")
    monkeypatch.setattr(Words, "train", no_training)
    second = load_corpus(tmp_path / "w.txt", tokenizer="word", cache_dir=tmp_path / "cache")
    assert second.tokenizer == first.tokenizer and second.tokens.tolist() == first.tokens.tolist()
    (tmp_path / "w.txt").write_text("b a b c d\n")
    with pytest.raises(AssertionError, match="trained again"):
        load_corpus(tmp_path / "w.txt", tokenizer="word", cache_dir=tmp_path / "cache")
