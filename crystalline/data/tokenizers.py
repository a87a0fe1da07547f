"""Tokenizers: text <-> int32 token ids, saved and loaded as JSON (never pickle).

    from crystalline.data.tokenizers import ByteTokenizer, WordTokenizer, load_tokenizer
    tok = ByteTokenizer()                         # vocabulary 256: the UTF-8 bytes
    ids = tok.encode("To be, or not")            # (n,) int32
    tok.decode(ids)                               # "To be, or not"
    words = WordTokenizer.train(text, max_vocab=8192)
    words.save("words.json"); load_tokenizer("words.json")   # the same tokenizer back
    bpe = BPETokenizer.train(text, vocab_size=4096)          # byte-level BPE (HF `tokenizers`)
    BPETokenizer.from_file("gpt2/tokenizer.json")            # any HF BPE tokenizer.json

Every kind shares one interface: `encode(str)`, `encode_bytes(bytes)`, `decode(ids)`,
`vocab_size`, `name` ("byte" / "word" / "bpe"), `to_dict()`, `save(path)`.

Invalid UTF-8: the byte tokenizer encodes raw bytes as they are (`encode_bytes`), and its
`decode` replaces byte sequences that are not valid UTF-8 with U+FFFD. The word tokenizer works
on text: `encode_bytes` decodes with errors="replace", so each invalid sequence becomes U+FFFD
*inside* the word it was in (e.g. b"caf\\xe9" -> the word "caf\\ufffd"), and that word is an
ordinary vocabulary entry (or UNK) like any other. The BPE tokenizer does the same before its
byte-level pre-tokenizer, so U+FFFD's three bytes stand for each invalid sequence.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from crystalline.errors import DataError

FORMAT = "crystalline-tokenizer"   # the "format" field of every tokenizer JSON
FORMAT_VERSION = 1

# Word-tokenizer specials: fixed ids 0..4, never learnt from text.
PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<mask>"]
DEFAULT_MAX_VOCAB = 8192   # word vocabulary cap (specials included) when none is given
DEFAULT_BPE_VOCAB = 4096   # BPE vocabulary (the 256 bytes included) when none is given


def _as_ids(ids, vocab_size: int) -> np.ndarray:
    """Validate token ids for decoding: any integer sequence, each in [0, vocab_size)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.reshape(-1).astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"token ids must be integers, got dtype {arr.dtype}; pass the ids encode() made")
    arr = arr.reshape(-1).astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(f"token id {bad} is outside the vocabulary [0, {vocab_size}); "
                        "decode ids with the tokenizer that made them")
    return arr


class Tokenizer:
    """The shared interface; subclasses set `name` and implement the rest."""

    name: str = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Text -> (n,) int32 token ids."""
        raise NotImplementedError

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Raw corpus bytes -> (n,) int32 token ids."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """(n,) token ids -> text."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """A JSON-ready description from which `load_tokenizer` rebuilds this tokenizer."""
        raise NotImplementedError

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal tokenizers give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as UTF-8 JSON, atomically; returns the path."""
        from crystalline.io import atomic_write_bytes
        path = Path(path)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
        return path

    def __eq__(self, other):
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    def __hash__(self):
        return hash(self.to_json())


class ByteTokenizer(Tokenizer):
    """Byte-level tokens: vocabulary 256, token i is the byte i of the UTF-8 encoding.

    Takes any text: lone surrogates (which have no UTF-8 form) are encoded with
    errors="surrogatepass". `decode` uses errors="replace": byte sequences that are not valid
    UTF-8 (a cut multi-byte character, raw Latin-1) come back as U+FFFD, never an exception.
    """

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(text.encode("utf-8", errors="surrogatepass"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)   # (n,)

    def decode(self, ids) -> str:
        return _as_ids(ids, 256).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "byte"}

    def __repr__(self):
        return "ByteTokenizer()"


class WordTokenizer(Tokenizer):
    """Word-level tokens: lower-cased, split on whitespace, specials PAD UNK BOS EOS MASK = 0..4.

    `vocab` is the full id -> string table, specials first. Words not in it encode to UNK, and
    so does a word that spells a special ("<bos>" in the text is a word, not a BOS marker).
    `decode` joins words with single spaces, drops PAD and writes other specials as "<unk>" etc.
    """

    name = "word"

    def __init__(self, vocab: list[str]):
        _check_word_vocab(vocab, where="WordTokenizer vocab")
        self.vocab = list(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab) if i >= len(SPECIALS)}

    @classmethod
    def train(cls, text: str, max_vocab: int = DEFAULT_MAX_VOCAB, min_count: int = 1) -> "WordTokenizer":
        """Learn a vocabulary of at most `max_vocab` entries (specials included).

        Words are ranked by count, descending; equal counts are ordered lexicographically
        (by code point), so the same text always gives the same vocabulary. Words seen fewer
        than `min_count` times are left out.
        """
        if isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab <= len(SPECIALS):
            raise DataError(f"max_vocab = {max_vocab!r} is too small: use an integer above "
                            f"{len(SPECIALS)} (the {len(SPECIALS)} specials take ids 0..{len(SPECIALS) - 1})")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise DataError(f"min_count = {min_count!r} is invalid: use an integer >= 1")
        counts = Counter(text.lower().split())
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((item for item in counts.items() if item[1] >= min_count),
                        key=lambda kv: (-kv[1], kv[0]))
        words = [w for w, _ in ranked[: max_vocab - len(SPECIALS)]]
        return cls(SPECIALS + words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        words = text.lower().split()
        get = self._ids.get
        return np.fromiter((get(w, UNK) for w in words), dtype=np.int32, count=len(words))   # (n,)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Decode with errors="replace" (U+FFFD joins the word it sits in), then `encode`."""
        return self.encode(data.decode("utf-8", errors="replace"))

    def decode(self, ids) -> str:
        vocab = self.vocab
        return " ".join(vocab[i] for i in _as_ids(ids, len(vocab)).tolist() if i != PAD)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "word", "vocab": list(self.vocab)}

    def __repr__(self):
        return f"WordTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer(Tokenizer):
    """Byte-level BPE through the Hugging Face `tokenizers` library (GPT-2's scheme: text as UTF-8
    bytes mapped to 256 printable characters, split by GPT-2's regex, merges learnt by frequency).

    Encodes any text without an unknown token; `decode(encode(s)) == s` for every string without
    lone surrogates (those are encoded as U+FFFD). `hf` is the `tokenizers.Tokenizer`; its JSON
    (`hf.to_str()`) is what is saved, cached and carried in checkpoints, never a pickle.
    """

    name = "bpe"

    def __init__(self, hf):
        self.hf = hf

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """Learn merges on `text` until the vocabulary (256 bytes included) holds `vocab_size`
        tokens, or the text has no pair left to merge. Deterministic for a given text."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 256 <= vocab_size <= 2**20:
            raise DataError(f"vocab_size = {vocab_size!r} is invalid for a byte-level BPE: use an "
                            "integer from 256 (the bytes alone) to 1048576")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([text], trainer=trainer)
        return cls(hf)

    @classmethod
    def from_str(cls, doc: str, where: str = "tokenizer") -> "BPETokenizer":
        """From a Hugging Face tokenizer.json text; DataError unless it is a BPE tokenizer."""
        from tokenizers import Tokenizer as HFTokenizer
        try:
            model_type = json.loads(doc)["model"]["type"]
        except (ValueError, KeyError, TypeError):
            model_type = None
        if model_type != "BPE":
            raise DataError(f"{where} holds a {model_type} tokenizer, not a Hugging Face BPE "
                            "tokenizer.json; crystalline reads BPE tokenizers (or --tokenizer bpe)")
        try:
            return cls(HFTokenizer.from_str(doc))
        except Exception as e:   # noqa: BLE001 - the library raises plain Exceptions
            raise DataError(f"{where} is not a valid Hugging Face tokenizer.json ({e})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        path = Path(path)
        try:
            return cls.from_str(path.read_bytes().decode("utf-8"), where=f"tokenizer file {path}")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"tokenizer file {path} cannot be read ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        try:
            ids = self.hf.encode(text, add_special_tokens=False).ids
        except TypeError:             # lone surrogates, which have no UTF-8 form: U+FFFD each byte
            text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
            ids = self.hf.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32).reshape(-1)   # (n,)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return self.encode(data.decode("utf-8", errors="replace"))

    def decode(self, ids) -> str:
        return self.hf.decode(_as_ids(ids, self.vocab_size).tolist(), skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "bpe",
                "tokenizer": json.loads(self.hf.to_str())}

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _check_word_vocab(vocab, where: str) -> None:
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        raise DataError(f"{where}: \"vocab\" must be a list of strings")
    if vocab[: len(SPECIALS)] != SPECIALS:
        raise DataError(f"{where}: \"vocab\" must start with the specials {SPECIALS}")
    seen = set()
    for i, w in enumerate(vocab[len(SPECIALS):], start=len(SPECIALS)):
        if not w or w.split() != [w] or w != w.lower():
            raise DataError(f"{where}: vocab[{i}] = {w!r} is not a lower-case word without whitespace")
        if w in seen or w in SPECIALS:
            raise DataError(f"{where}: vocab[{i}] = {w!r} appears twice")
        seen.add(w)


def load_tokenizer(path_or_dict: str | Path | dict) -> Tokenizer:
    """Rebuild a tokenizer from its JSON file or its `to_dict()`, or read a Hugging Face BPE
    tokenizer.json; DataError if it is neither."""
    if isinstance(path_or_dict, dict):
        doc, where = path_or_dict, "tokenizer dict"
    else:
        path = Path(path_or_dict)
        where = f"tokenizer file {path}"
        if not path.is_file():
            raise DataError(f"{where} does not exist; pass the path of a JSON file written by "
                            "Tokenizer.save() or a Hugging Face tokenizer.json")
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as e:   # bad UTF-8, bad JSON, huge ints
            raise DataError(f"{where} is not valid JSON ({e}); write it with Tokenizer.save()") from None
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if "format" not in doc and "model" in doc:       # a Hugging Face tokenizer.json
        return BPETokenizer.from_str(json.dumps(doc), where)
    if doc.get("format") != FORMAT:
        raise DataError(f"{where}: \"format\" must be {FORMAT!r}, got {doc.get('format')!r}; "
                        "this is not a crystalline tokenizer file")
    if doc.get("version") != FORMAT_VERSION:
        raise DataError(f"{where}: unsupported \"version\" {doc.get('version')!r} "
                        f"(this crystalline reads version {FORMAT_VERSION})")
    kind = doc.get("kind")
    allowed = {"byte": {"format", "version", "kind"}, "word": {"format", "version", "kind", "vocab"},
               "bpe": {"format", "version", "kind", "tokenizer"}}
    if kind not in allowed:
        raise DataError(f"{where}: \"kind\" must be \"byte\", \"word\" or \"bpe\", got {kind!r}")
    unknown = sorted(set(doc) - allowed[kind])
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown} for a {kind} tokenizer")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if not isinstance(doc.get("tokenizer"), dict):
            raise DataError(f"{where}: \"tokenizer\" must be the Hugging Face tokenizer's JSON object")
        return BPETokenizer.from_str(json.dumps(doc["tokenizer"]), where)
    if "vocab" not in doc:
        raise DataError(f"{where}: missing key \"vocab\"")
    _check_word_vocab(doc["vocab"], where)
    return WordTokenizer(doc["vocab"])


def tokenizer_spec(spec: str | None) -> str | None:
    """A --tokenizer value checked at the CLI: None (byte), "byte", "word", "bpe" or a .json path."""
    if spec is None or spec in ("byte", "word", "bpe") or spec.endswith(".json"):
        return spec
    raise DataError(f"--tokenizer {spec!r} is not a tokenizer: use byte, word, bpe or the path "
                    "of a tokenizer .json file")


def make_tokenizer(spec, text_bytes: bytes | None = None) -> Tokenizer:
    """A tokenizer from None / a Tokenizer / "byte" / "word" or "bpe" (trained on `text_bytes`) /
    a JSON path (a crystalline tokenizer file or a Hugging Face tokenizer.json)."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, Tokenizer):
        return spec
    if spec == "word":
        if text_bytes is None:
            raise DataError("a word tokenizer must be trained on text; pass the corpus text")
        return WordTokenizer.train(text_bytes.decode("utf-8", errors="replace"))
    if spec == "bpe":
        if text_bytes is None:
            raise DataError("a BPE tokenizer must be trained on text; pass the corpus text")
        return BPETokenizer.train(text_bytes.decode("utf-8", errors="replace"))
    if isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
        return load_tokenizer(spec)
    raise DataError(f"unknown tokenizer {spec!r}: use \"byte\", \"word\", \"bpe\", a tokenizer "
                    "JSON path or a Tokenizer object")
