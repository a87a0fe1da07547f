"""Byte and word tokenizers: round trips, vocabulary ranking, JSON save/load, bad files."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalline.data.tokenizers import (BOS, MASK, PAD, SPECIALS, UNK, ByteTokenizer, WordTokenizer,
                                         load_tokenizer)
from crystalline.errors import DataError

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéßΩ\ufffd", min_size=1, max_size=6)
SPACE = st.sampled_from([" ", "  ", "\n", "\t", " \r\n "])


@given(st.text())
def test_byte_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


@given(st.binary())
def test_byte_encode_bytes_is_the_raw_bytes(data):
    tok = ByteTokenizer()
    ids = tok.encode_bytes(data)
    assert ids.dtype == np.int32 and ids.tolist() == list(data)
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_byte_decode_replaces_invalid_utf8_and_rejects_out_of_range_ids():
    tok = ByteTokenizer()
    assert tok.decode([0x63, 0x61, 0x66, 0xE9]) == "caf\ufffd"        # Latin-1 é is not UTF-8
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"               # a cut 2-byte character
    assert tok.encode("\ud800").tolist() == [0xED, 0xA0, 0x80]       # a lone surrogate still encodes
    assert tok.decode([]) == ""
    with pytest.raises(DataError, match="256"):
        tok.decode([256])
    with pytest.raises(DataError, match="-1"):
        tok.decode([-1])
    with pytest.raises(DataError, match="integers"):
        tok.decode([1.5])


def test_word_vocab_ranks_by_count_then_lexicographically_up_to_the_cap():
    text = "b a c b a b Dd dd E e e"      # counts: b 3, e 3, a 2, dd 2, c 1
    tok = WordTokenizer.train(text, max_vocab=len(SPECIALS) + 4)
    assert tok.vocab == SPECIALS + ["b", "e", "a", "dd"]
    assert tok.vocab_size == 9
    assert tok.encode("c B").tolist() == [UNK, 5]            # c fell off the cap
    assert WordTokenizer.train(text, max_vocab=100, min_count=2).vocab == SPECIALS + ["b", "e", "a", "dd"]
    assert WordTokenizer.train(text, max_vocab=100).vocab[-1] == "c"


def test_word_specials_and_decode():
    tok = WordTokenizer.train("the cat <bos> sat <pad>")
    assert "<bos>" not in tok.vocab[len(SPECIALS):]             # specials are never learnt
    assert tok.encode("<bos> the").tolist() == [UNK, tok.vocab.index("the")]
    ids = [BOS, tok.vocab.index("the"), PAD, tok.vocab.index("cat"), MASK, PAD]
    assert tok.decode(ids) == "<bos> the cat <mask>"
    assert tok.encode("").tolist() == [] and tok.encode("").dtype == np.int32
    with pytest.raises(DataError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_word_invalid_utf8_becomes_replacement_char_inside_the_word():
    tok = WordTokenizer.train(b"caf\xe9 caf\xe9 ok".decode("utf-8", errors="replace"))
    assert "caf\ufffd" in tok.vocab
    ids = tok.encode_bytes(b"CAF\xe9 ok")
    assert tok.decode(ids) == "caf\ufffd ok"


@settings(max_examples=60, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=30), st.data())
def test_word_round_trips_known_words_and_maps_unknown_to_unk(words, data):
    tok = WordTokenizer.train(" ".join(words))
    known = [w.lower() for w in words]
    chosen = data.draw(st.lists(st.sampled_from(known), max_size=20))
    spaces = data.draw(st.lists(SPACE, min_size=len(chosen) + 1, max_size=len(chosen) + 1))
    shout = [w.upper() if w.upper().lower() == w else w for w in chosen]   # "ß".upper() is "SS"
    text = spaces[0] + "".join(w + s for w, s in zip(shout, spaces[1:]))
    assert tok.decode(tok.encode(text)) == " ".join(chosen)
    unknown = "qq" + "".join(known)      # longer than any known word, so not one of them
    assert tok.encode(f"{unknown} {known[0]}").tolist() == [UNK, tok.vocab.index(known[0])]


@pytest.mark.parametrize("tok", [ByteTokenizer(), WordTokenizer.train("zebra apple apple Mango")])
def test_save_load_round_trip(tmp_path, tok):
    path = tok.save(tmp_path / "tok.json")
    back = load_tokenizer(path)
    assert type(back) is type(tok) and back.name == tok.name and back == tok
    assert back.vocab_size == tok.vocab_size
    assert load_tokenizer(tok.to_dict()) == tok
    text = "apple Mango zebra kiwi"
    assert back.encode(text).tolist() == tok.encode(text).tolist()
    assert not list(tmp_path.glob(".*tmp"))               # the atomic write left no temp file


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"format": "pickle", "version": 1, "kind": "byte"}', "not a crystalline tokenizer"),
    (b'{"format": "crystalline-tokenizer", "version": 9, "kind": "byte"}', "version"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "bpe"}', "\"tokenizer\" must be"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "word"}', 'missing key "vocab"'),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "byte", "x": 1}', "unknown key"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "word", "vocab": ["a"]}', "specials"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "word", "vocab": '
     b'["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "a", "a"]}', "twice"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "word", "vocab": '
     b'["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "a b"]}', "whitespace"),
    (b'{"format": "crystalline-tokenizer", "version": 1, "kind": "word", "vocab": 7}', "list of strings"),
])
def test_bad_tokenizer_json_raises_data_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_tokenizer(path)


def test_missing_tokenizer_file_and_bad_train_arguments(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(DataError, match="max_vocab"):
        WordTokenizer.train("a b", max_vocab=5)
    with pytest.raises(DataError, match="min_count"):
        WordTokenizer.train("a b", min_count=0)


def test_saved_json_is_plain_json(tmp_path):
    path = WordTokenizer.train("x y y").save(tmp_path / "w.json")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc == {"format": "crystalline-tokenizer", "version": 1, "kind": "word",
                   "vocab": SPECIALS + ["y", "x"]}
