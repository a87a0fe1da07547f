"""On-disk cache of encoded corpora and trained word vocabularies, each entry with a checksum.

    from crystalline.data.cache import cached_encode, default_cache_dir
    tokens = cached_encode(raw_bytes, tokenizer, cache_dir)   # (n,) int32, read-only
    words = cached_word_tokenizer(raw_bytes, cache_dir)        # trained once per text and cap

Key: sha256 over a format tag, the sha256 of the exact bytes that are tokenized, and the
tokenizer's canonical JSON, so a changed file or a different vocabulary gets a new entry.
A token entry `<key>.tokens` is a 256-byte JSON header (format, count, sha256 of the data)
followed by the tokens as little-endian int32; a vocabulary entry `<key>.tokenizer.json`
holds the tokenizer and the sha256 of its canonical JSON. Entries are written atomically
(crystalline.io). On open an entry is checked whole (header, length, checksum, token range);
a damaged one (bad header, flipped byte, truncated file) is rebuilt with a warning. Tokens are
read into memory, so a cache file changed under a running trainer cannot crash it.
Word vocabularies and BPE merges trained on a corpus are cached as `<key>.tokenizer.json`
(crystalline's tokenizer JSON: never a pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from crystalline.io import atomic_write, atomic_write_json

CACHE_FORMAT = b"crystalline-tokens-v2\0"
VOCAB_FORMAT = b"crystalline-word-vocab-v1\0"
HEADER_BYTES = 256
ENTRY_FORMAT = "crystalline-tokens-v2"
BPE_FORMAT = b"crystalline-bpe-v2\0"


def default_cache_dir() -> Path:
    """`$CRYSTALLINE_CACHE` if set, else `~/.cache/crystalline`."""
    env = os.environ.get("CRYSTALLINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "crystalline"


def cache_key(data: bytes, tokenizer) -> str:
    """Hex sha256 of (format tag, sha256(data), tokenizer canonical JSON)."""
    h = hashlib.sha256(CACHE_FORMAT)
    h.update(hashlib.sha256(data).digest())
    h.update(tokenizer.to_json().encode("utf-8"))
    return h.hexdigest()


def write_entry(path: Path, tokens: np.ndarray) -> Path:
    """Write (n,) int32 `tokens` as a checksummed entry, atomically."""
    data = np.ascontiguousarray(tokens, dtype="<i4").tobytes()
    header = json.dumps({"format": ENTRY_FORMAT, "count": len(tokens),
                         "sha256": hashlib.sha256(data).hexdigest()}).encode("ascii")
    assert len(header) < HEADER_BYTES
    header = header.ljust(HEADER_BYTES - 1) + b"\n"

    def write(f):
        f.write(header)
        f.write(data)
    return atomic_write(path, write)


def read_entry(path: Path, vocab_size: int) -> np.ndarray:
    """The verified (n,) int32 tokens of an entry; ValueError saying what is wrong with it."""
    raw = path.read_bytes()
    try:
        head = json.loads(raw[:HEADER_BYTES].decode("ascii"))
        count, digest = int(head["count"]), str(head["sha256"])
        if head["format"] != ENTRY_FORMAT:
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError("its header is damaged") from None
    if len(raw) != HEADER_BYTES + 4 * count:
        raise ValueError(f"it holds {len(raw) - HEADER_BYTES} bytes of tokens, its header says {4 * count}")
    data = memoryview(raw)[HEADER_BYTES:]
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError("its checksum does not match its contents")
    tokens = np.frombuffer(data, dtype="<i4")                            # (n,) read-only, no copy
    if count and not (0 <= tokens.min() and tokens.max() < vocab_size):
        raise ValueError(f"it holds token ids outside 0..{vocab_size - 1}")
    return tokens.astype(np.int32, copy=False)


def _damaged(path: Path, reason: str) -> None:
    warnings.warn(f"token cache entry {path} is damaged ({reason}); rebuilding it", stacklevel=3)


def cached_encode(data: bytes, tokenizer, cache_dir: str | Path | None = None) -> np.ndarray:
    """`tokenizer.encode_bytes(data)`, read from the cache when this (data, tokenizer) was seen.

    Returns a read-only (n,) int32 array. When the cache folder cannot be written a warning
    says so and the result is the same.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{cache_key(data, tokenizer)}.tokens"
    if path.is_file():
        try:
            return read_entry(path, tokenizer.vocab_size)
        except OSError as e:
            _damaged(path, e.strerror or str(e))
        except ValueError as e:
            _damaged(path, str(e))
    tokens = np.ascontiguousarray(tokenizer.encode_bytes(data), dtype=np.int32)   # (n,)
    tokens.flags.writeable = False
    if tokens.size == 0:
        return tokens
    try:
        write_entry(path, tokens)
    except OSError as e:
        warnings.warn(f"could not write the token cache {path} ({e}); continuing without it. "
                      "Set CRYSTALLINE_CACHE to a writable folder to cache encoded corpora.",
                      stacklevel=2)
    return tokens


def cached_word_tokenizer(data: bytes, cache_dir: str | Path | None = None,
                          max_vocab: int | None = None, min_count: int = 1):
    """`WordTokenizer.train` on `data` (decoded with errors="replace"), cached on disk."""
    from crystalline.data.tokenizers import DEFAULT_MAX_VOCAB, WordTokenizer
    max_vocab = DEFAULT_MAX_VOCAB if max_vocab is None else max_vocab
    return _cached_tokenizer(VOCAB_FORMAT, data, f"max_vocab={max_vocab},min_count={min_count}",
                             lambda text: WordTokenizer.train(text, max_vocab, min_count), cache_dir)


def cached_bpe_tokenizer(data: bytes, cache_dir: str | Path | None = None,
                         vocab_size: int | None = None):
    """`BPETokenizer.train` on `data` (decoded with errors="replace"), cached on disk."""
    from crystalline.data.tokenizers import DEFAULT_BPE_VOCAB, BPETokenizer
    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    return _cached_tokenizer(BPE_FORMAT, data, f"vocab_size={vocab_size}",
                             lambda text: BPETokenizer.train(text, vocab_size), cache_dir)


def _cached_tokenizer(tag: bytes, data: bytes, settings: str, train, cache_dir):
    """`train(text)` on `data`, stored as `<key>.tokenizer.json` with a checksum of its JSON; a
    damaged entry is rebuilt with a warning."""
    from crystalline.data.tokenizers import load_tokenizer
    from crystalline.errors import DataError
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    h = hashlib.sha256(tag)
    h.update(hashlib.sha256(data).digest())
    h.update(settings.encode())
    path = cache_dir / f"{h.hexdigest()}.tokenizer.json"
    if path.is_file():
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
            tokenizer = load_tokenizer(doc["tokenizer"])
            if hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest() != doc["sha256"]:
                raise ValueError("its checksum does not match its contents")
            return tokenizer
        except (OSError, ValueError, KeyError, TypeError, DataError) as e:
            _damaged(path, str(e) if isinstance(e, (ValueError, DataError)) else "unreadable")
    tokenizer = train(data.decode("utf-8", errors="replace"))
    try:
        atomic_write_json(path, {"sha256": hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest(),
                                 "tokenizer": tokenizer.to_dict()}, ensure_ascii=False)
    except OSError as e:
        warnings.warn(f"could not write the tokenizer cache {path} ({e}); continuing without it",
                      stacklevel=3)
    return tokenizer
