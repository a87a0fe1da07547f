"""The token cache verifies every entry when it opens it: a damaged header, a flipped byte, a
truncated file or out-of-range token ids are rebuilt with a warning, never a crash later."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from crystalline.data.cache import HEADER_BYTES, cache_key, cached_encode, cached_word_tokenizer, read_entry
from crystalline.data.corpus import load_corpus
from crystalline.data.tokenizers import ByteTokenizer

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def entry_of(tmp_path, data=TEXT):
    cached_encode(data, ByteTokenizer(), tmp_path)
    return tmp_path / f"{cache_key(data, ByteTokenizer())}.tokens"


def damage_header(raw):
    return b"{" + raw[1:40] + b"\xff" + raw[41:]


def flip_a_token_byte(raw):
    raw = bytearray(raw)
    raw[HEADER_BYTES + 4 * 100] ^= 0x01
    return bytes(raw)


def truncate(raw):
    return raw[:HEADER_BYTES + 4 * 100 + 2]


def out_of_range_with_a_valid_checksum(raw):
    tokens = np.frombuffer(raw[HEADER_BYTES:], "<i4").copy()
    tokens[7] = 300                                            # not a byte token
    data = tokens.tobytes()
    head = json.loads(raw[:HEADER_BYTES])
    head["sha256"] = hashlib.sha256(data).hexdigest()
    return json.dumps(head).encode().ljust(HEADER_BYTES - 1) + b"\n" + data


@pytest.mark.parametrize("damage, reason", [
    (damage_header, "header is damaged"),
    (flip_a_token_byte, "checksum does not match"),
    (truncate, "header says"),
    (out_of_range_with_a_valid_checksum, "outside 0..255"),
    (lambda raw: b"", "header is damaged"),
])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage, reason):
    entry = entry_of(tmp_path)
    entry.write_bytes(damage(entry.read_bytes()))
    with pytest.warns(UserWarning, match=f"token cache entry .* is damaged .*{reason}.*; rebuilding it"):
        tokens = cached_encode(TEXT, ByteTokenizer(), tmp_path)
    assert tokens.tolist() == list(TEXT)                        # the exact bytes, from the text
    assert read_entry(entry, 256).tolist() == list(TEXT)         # and the entry is whole again


def test_a_sound_entry_is_read_not_encoded_again(tmp_path, monkeypatch):
    entry_of(tmp_path)

    def no_encoding(self, data):
        raise AssertionError("encoded again instead of reading the cache")
    monkeypatch.setattr(ByteTokenizer, "encode_bytes", no_encoding)
    tokens = cached_encode(TEXT, ByteTokenizer(), tmp_path)
    assert tokens.tolist() == list(TEXT) and not tokens.flags.writeable


TRUNCATE_MID_RUN = """
import sys
from pathlib import Path
import numpy as np
from crystalline import Trainer
from crystalline.config import preset
from crystalline.data.corpus import load_corpus
cache = Path(sys.argv[2])
corpus = load_corpus(sys.argv[1], cache_dir=cache)
m, t = preset("tiny")
tr = Trainer(m, t.replace(eval_interval=0), corpus, workers=1)
tr.step()
for entry in cache.glob("*.tokens"):
    with open(entry, "r+b") as f:
        f.truncate(300)                # another process cuts the cache file under the run
for _ in range(20):
    tr.step()
print("sum", int(np.asarray(corpus.tokens, dtype=np.int64).sum()), tr.steps_done)
"""


def test_truncating_the_cache_file_mid_run_does_not_crash_it(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(TEXT * 5)
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_MID_RUN, str(corpus), str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr                     # a memmap would die of SIGBUS (-7)
    assert proc.stdout.split() == ["sum", str(sum(TEXT * 5)), "21"]
    with pytest.warns(UserWarning, match="damaged"):             # the next run rebuilds the entry
        again = load_corpus(corpus, cache_dir=tmp_path / "cache")
    assert again.tokens.tolist() == list(TEXT * 5)


def test_a_damaged_vocabulary_entry_is_rebuilt(tmp_path):
    first = cached_word_tokenizer(TEXT, tmp_path)
    (entry,) = tmp_path.glob("*.tokenizer.json")
    doc = json.loads(entry.read_text())
    word = next(w for w in doc["tokenizer"]["vocab"] if w.isalpha() and len(w) > 3)
    entry.write_text(entry.read_text().replace(f'"{word}"', f'"{word[::-1]}"', 1))   # still valid JSON
    with pytest.warns(UserWarning, match="checksum does not match"):
        again = cached_word_tokenizer(TEXT, tmp_path)
    assert again == first
    cached_word_tokenizer(TEXT, tmp_path)                        # sound again: no warning
