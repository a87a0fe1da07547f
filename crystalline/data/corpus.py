"""Corpora: a text file, a folder of text files, or a SQuAD file, encoded to one token array.

    from crystalline.data.corpus import load_corpus, bundled_corpus
    corpus = load_corpus(bundled_corpus())            # byte tokens of Tiny Shakespeare
    corpus = load_corpus("notes/", tokenizer="word")  # every text file below notes/, word tokens
    corpus = load_corpus("squad:train-v2.0.json")     # SQuAD rendered as text
    train, val = corpus.split(0.1)                    # contiguous tail split

A folder is read recursively in sorted order of relative paths. It skips, and
`folder_entries(folder)` (`crystalline data info FOLDER --list`) lists with the reason:
entries whose name starts with "." (.git, .DS_Store); anything but a regular file; files about
the corpus rather than of it, by name (README, LICENSE, LICENCE, COPYING, NOTICE, AUTHORS,
CHANGELOG, CONTRIBUTING, in any case and with any extension: README.md, LICENSE.txt); and
binary files. Only a file's first 8 KiB are read to decide, so a huge binary file costs one
small read. The check is by content, not extension:
it is binary, and skipped, when its first 8 KiB hold a NUL byte, or are neither valid UTF-8
nor at least 95% "printable" bytes: ASCII 0x20-0x7E, tab, newline, CR, vertical tab, form
feed, backspace, ESC, and any byte >= 0x80 (so Latin-1 or cp1252 text is kept, while
random bytes, about 90% printable by this count, are not). UTF-16 files hold NULs: skipped. The text of a folder's
files is joined in that order, each file followed by "\\n" if it does not end with one. A single
file is used byte for byte. Encoded tokens are cached on disk (see crystalline.data.cache).
"""

from __future__ import annotations

import codecs
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crystalline.data.tokenizers import Tokenizer, make_tokenizer
from crystalline.errors import DataError

BPE_TRAIN_FRACTION = 0.9    # the trainer holds out the last 10% of tokens for validation
SNIFF_BYTES = 8192          # how much of a file the binary check reads
MIN_PRINTABLE = 0.95        # the printable share that makes a non-UTF-8 file text
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x20:0x7F] = True
_PRINTABLE[0x80:] = True
_PRINTABLE[[0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1B]] = True
# Names (before the first ".", any case) of files that describe a corpus folder, not text of it.
ABOUT_THE_CORPUS = frozenset({"readme", "license", "licence", "copying", "notice", "authors",
                              "changelog", "contributing"})


def bundled_corpus() -> Path:
    """Path of the bundled Tiny Shakespeare (`data/tinyshakespeare.txt` in the repository)."""
    import crystalline
    path = Path(crystalline.__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"
    if not path.is_file():
        raise DataError(f"the bundled corpus {path} is missing; it ships in the repository's data/ "
                        "folder (restore it with git, or pass the path of your own text file)")
    return path


def is_text(head: bytes) -> bool:
    """Whether a file whose first bytes are `head` is text (the rule in the module docstring)."""
    head = head[:SNIFF_BYTES]
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)   # a cut last char is fine
        return True
    except UnicodeDecodeError:
        pass
    return bool(_PRINTABLE[np.frombuffer(head, dtype=np.uint8)].mean() >= MIN_PRINTABLE)


@dataclass(frozen=True)
class FolderEntry:
    """One entry below a corpus folder: its path relative to the folder ("/" ends a folder's)
    and why it is skipped ("" when its text is taken)."""

    name: str
    skipped: str


def _skip_reason(path: Path) -> str:
    if path.name.startswith("."):
        return "hidden"
    if not path.is_file():
        return "not a regular file"
    if path.name.split(".")[0].lower() in ABOUT_THE_CORPUS:
        return "README/LICENSE-like name"
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); make it readable or move it out of "
                        "the corpus folder") from None
    return "" if is_text(head) else "binary"


def folder_entries(folder) -> list[FolderEntry]:
    """Every entry below `folder` in reading order (sorted relative paths), taken or skipped;
    hidden folders are listed once and not entered."""
    folder, found = Path(folder), []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found += [((rel / d).parts, FolderEntry(f"{(rel / d).as_posix()}/", "hidden"))
                  for d in dirs if d.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [((rel / f).parts, FolderEntry((rel / f).as_posix(), _skip_reason(Path(root, f))))
                  for f in files]
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


def _read_folder(path: Path) -> tuple[bytes, int]:
    parts, skipped = [], {}
    for entry in folder_entries(path):
        if entry.skipped:
            skipped[entry.skipped] = skipped.get(entry.skipped, 0) + 1
            continue
        try:
            data = (path / entry.name).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {path / entry.name} ({e.strerror}); make it readable or "
                            "move it out of the corpus folder") from None
        parts.append(data if not data or data.endswith(b"\n") else data + b"\n")
    if not parts:
        counts = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        raise DataError(f"folder {path} has no text files{f' (skipped: {counts})' if counts else ''}; "
                        "put .txt or other text files in it, or pass a file")
    return b"".join(parts), len(parts)


def _read_source(source: str) -> tuple[bytes, int]:
    """(the bytes to tokenize, number of files used) for a path or "squad:PATH"."""
    if source == "":
        raise DataError("the corpus path is empty; pass a text file, a folder of text files or "
                        "squad:PATH (leave --data out to use the bundled Tiny Shakespeare)")
    if source.startswith("squad:"):
        from crystalline.data.squad import render_squad_file
        return render_squad_file(source[len("squad:"):]).encode("utf-8"), 1
    path = Path(source)
    if path.is_file():
        return path.read_bytes(), 1
    if path.is_dir():
        return _read_folder(path)
    raise DataError(f"corpus {source} does not exist; pass a text file, a folder of text files, "
                    "or squad:PATH for a SQuAD JSON file")


@dataclass
class Corpus:
    """An encoded corpus. `tokens`: (n,) int32, possibly a read-only memmap of the cache;
    `sha256`: hex digest of the bytes that were tokenized (checkpoints record it)."""

    tokens: np.ndarray
    tokenizer: Tokenizer
    source: str
    num_bytes: int
    num_files: int
    sha256: str

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) views: the last floor(n * val_fraction) tokens are validation."""
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction = {val_fraction!r} is invalid: use a number in [0, 1)")
        n_train = len(self.tokens) - int(len(self.tokens) * val_fraction)
        return self.tokens[:n_train], self.tokens[n_train:]


def load_corpus(source, tokenizer=None, cache_dir=None, vocab_size: int | None = None) -> Corpus:
    """Read and encode a corpus (see the module docstring for what `source` may be).

    tokenizer: None or "byte" (the default, ByteTokenizer), "word" (a WordTokenizer trained on
    this corpus), "bpe" (a byte-level BPE trained on the head BPE_TRAIN_FRACTION of its bytes,
    the part the trainer does not hold out for validation), a tokenizer JSON path (crystalline's
    or a Hugging Face tokenizer.json), or a Tokenizer. vocab_size: the word or BPE vocabulary
    (default 8192 / 4096); an error for the other kinds. cache_dir: where encoded tokens and
    trained tokenizers are cached (default `$CRYSTALLINE_CACHE` or ~/.cache/crystalline).
    """
    from crystalline.data.cache import cached_bpe_tokenizer, cached_encode, cached_word_tokenizer
    source = str(source)
    if vocab_size is not None and tokenizer not in ("word", "bpe"):
        raise DataError(f"a vocabulary size applies to the word and bpe tokenizers, not to "
                        f"{tokenizer or 'byte'!r}; leave it out or choose one of them")
    data, num_files = _read_source(source)
    if tokenizer == "word":
        tok = cached_word_tokenizer(data, cache_dir, max_vocab=vocab_size)
    elif tokenizer == "bpe":
        tok = cached_bpe_tokenizer(data[:int(len(data) * BPE_TRAIN_FRACTION)], cache_dir, vocab_size)
    else:
        tok = make_tokenizer(tokenizer, data)
    tokens = cached_encode(data, tok, cache_dir) if data else np.zeros(0, np.int32)
    if len(tokens) == 0:
        raise DataError(f"corpus {source} is empty ({len(data)} bytes gave no tokens); "
                        "pass a file or folder with text in it")
    return Corpus(tokens=tokens, tokenizer=tok, source=source, num_bytes=len(data), num_files=num_files,
                  sha256=hashlib.sha256(data).hexdigest())


def corpus_info(source, tokenizer="byte", cache_dir=None, vocab_size=None) -> dict:
    """Figures of a corpus: source, files, bytes, tokens, vocab_size, tokenizer (its name)."""
    corpus = load_corpus(source, tokenizer=tokenizer, cache_dir=cache_dir, vocab_size=vocab_size)
    return {"source": corpus.source, "files": corpus.num_files, "bytes": corpus.num_bytes,
            "tokens": int(len(corpus.tokens)), "vocab_size": corpus.tokenizer.vocab_size,
            "tokenizer": corpus.tokenizer.name}
