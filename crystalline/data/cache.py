"""On-disk cache of encoded corpora, and the atomic file writes the data package uses.

    from crystalline.data.cache import cached_encode, default_cache_dir
    tokens = cached_encode(raw_bytes, tokenizer, cache_dir)   # (n,) int32, a read-only memmap
    words = cached_word_tokenizer(raw_bytes, cache_dir)        # trained once per text and cap

Key: sha256 over a format tag, the sha256 of the exact bytes that are tokenized, and the
tokenizer's canonical JSON, so a changed file or a different vocabulary gets a new entry.
Entries are `<key>.npy` files, written to a temporary file in the same folder, fsynced and
renamed into place (os.replace), so a crash never leaves a half entry under a real key. An
entry that does not load as a 1-D int32 array is treated as missing and written again.
Word vocabularies and BPE merges trained on a corpus are cached the same way, as
`<key>.tokenizer.json` (crystalline's tokenizer JSON: never a pickle).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

_UMASK = os.umask(0o022)   # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)
CACHE_FORMAT = b"crystalline-tokens-v1\0"
VOCAB_FORMAT = b"crystalline-word-vocab-v1\0"
BPE_FORMAT = b"crystalline-bpe-v1\0"


def default_cache_dir() -> Path:
    """`$CRYSTALLINE_CACHE` if set, else `~/.cache/crystalline`."""
    env = os.environ.get("CRYSTALLINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "crystalline"


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it to `path`.

    Readers see the old file or the complete new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:   # make the rename itself durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def cache_key(data: bytes, tokenizer) -> str:
    """Hex sha256 of (format tag, sha256(data), tokenizer canonical JSON)."""
    h = hashlib.sha256(CACHE_FORMAT)
    h.update(hashlib.sha256(data).digest())
    h.update(tokenizer.to_json().encode("utf-8"))
    return h.hexdigest()


def _load_entry(path: Path) -> np.ndarray | None:
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if tokens.dtype != np.int32 or tokens.ndim != 1:
        return None
    return tokens


def cached_encode(data: bytes, tokenizer, cache_dir: str | Path | None = None) -> np.ndarray:
    """`tokenizer.encode_bytes(data)`, read from the cache when this (data, tokenizer) was seen.

    Returns a read-only (n,) int32 memmap, or an in-memory array when the cache folder cannot
    be written (a warning says so; the result is the same).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{cache_key(data, tokenizer)}.npy"
    if path.is_file():
        tokens = _load_entry(path)
        if tokens is not None:
            return tokens
    tokens = np.ascontiguousarray(tokenizer.encode_bytes(data), dtype=np.int32)   # (n,)
    if tokens.size == 0:   # np.load cannot memmap an empty array; nothing to save anyway
        return tokens
    try:
        atomic_write(path, lambda f: np.save(f, tokens, allow_pickle=False))
    except OSError as e:
        warnings.warn(f"could not write the token cache {path} ({e}); continuing without it. "
                      "Set CRYSTALLINE_CACHE to a writable folder to cache encoded corpora.",
                      stacklevel=2)
        return tokens
    loaded = _load_entry(path)
    return loaded if loaded is not None else tokens


def cached_word_tokenizer(data: bytes, cache_dir: str | Path | None = None,
                          max_vocab: int | None = None, min_count: int = 1):
    """`WordTokenizer.train` on `data` (decoded with errors="replace"), cached on disk."""
    from crystalline.data.tokenizers import DEFAULT_MAX_VOCAB, WordTokenizer, load_tokenizer
    from crystalline.errors import DataError
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    max_vocab = DEFAULT_MAX_VOCAB if max_vocab is None else max_vocab
    h = hashlib.sha256(VOCAB_FORMAT)
    h.update(hashlib.sha256(data).digest())
    h.update(f"max_vocab={max_vocab},min_count={min_count}".encode())
    path = cache_dir / f"{h.hexdigest()}.tokenizer.json"
    if path.is_file():
        try:
            return load_tokenizer(path)
        except DataError:
            pass   # a damaged entry: train again and replace it
    tokenizer = WordTokenizer.train(data.decode("utf-8", errors="replace"), max_vocab, min_count)
    try:
        tokenizer.save(path)
    except OSError as e:
        warnings.warn(f"could not write the vocabulary cache {path} ({e}); continuing without it",
                      stacklevel=2)
    return tokenizer


def cached_bpe_tokenizer(data: bytes, cache_dir: str | Path | None = None,
                         vocab_size: int | None = None):
    """`BPETokenizer.train` on `data` (decoded with errors="replace"), cached on disk."""
    from crystalline.data.tokenizers import DEFAULT_BPE_VOCAB, BPETokenizer, load_tokenizer
    from crystalline.errors import DataError
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    h = hashlib.sha256(BPE_FORMAT)
    h.update(hashlib.sha256(data).digest())
    h.update(f"vocab_size={vocab_size}".encode())
    path = cache_dir / f"{h.hexdigest()}.tokenizer.json"
    if path.is_file():
        try:
            return load_tokenizer(path)
        except DataError:
            pass   # a damaged entry: train again and replace it
    tokenizer = BPETokenizer.train(data.decode("utf-8", errors="replace"), vocab_size)
    try:
        tokenizer.save(path)
    except OSError as e:
        warnings.warn(f"could not write the BPE cache {path} ({e}); continuing without it",
                      stacklevel=2)
    return tokenizer
