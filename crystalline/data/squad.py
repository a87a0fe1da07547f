"""SQuAD v1.1 / v2.0 JSON rendered as plain training text, and the official download.

    from crystalline.data.squad import render_squad_file, download_squad
    text = render_squad_file("train-v2.0.json")
    path = download_squad("2.0", "data/")          # needs a network

Each paragraph becomes one block, blocks separated by a blank line:

    Title: Normans
    Context: The Normans were ...
    Question: In what country is Normandy located?
    Answer: France
    Question: Who did King Charles III swear fealty to?
    Answer: (no answer)

The answer is the first answer's text. A v2.0 question marked "is_impossible" gets the line
`Answer: (no answer)` (its "plausible_answers" are not used). Text is copied verbatim. A file
that is not SQuAD-shaped raises DataError naming the place and the key, e.g.
`data[3].paragraphs[0].qas[2]: missing key "question"`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from crystalline.errors import DataError

NO_ANSWER = "(no answer)"
SQUAD_BASE_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
SQUAD_VERSIONS = ("1.1", "2.0")
SQUAD_SPLITS = ("train", "dev")


def _get(obj, key: str, kind: type, where: str):
    """obj[key], which must exist and be of `kind` (bool is never an int here)."""
    if key not in obj:
        raise DataError(f"{where}: missing key \"{key}\"")
    value = obj[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise DataError(f"{where}.{key}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", list: "a list", dict: "an object", int: "an integer", bool: "true or false"}[kind]


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _answer_line(qa: dict, where: str) -> str:
    answers = _get(qa, "answers", list, where)
    for j, answer in enumerate(answers):
        answer = _object(answer, f"{where}.answers[{j}]")
        _get(answer, "text", str, f"{where}.answers[{j}]")
        if "answer_start" in answer:
            _get(answer, "answer_start", int, f"{where}.answers[{j}]")
    impossible = _get(qa, "is_impossible", bool, where) if "is_impossible" in qa else False
    if impossible:
        return f"Answer: {NO_ANSWER}"
    if not answers:
        raise DataError(f"{where}.answers: empty, but the question is not marked \"is_impossible\": true; "
                        "fix the file or mark it unanswerable (SQuAD v2.0)")
    return f"Answer: {answers[0]['text']}"


def render_squad(doc: dict) -> str:
    """A parsed SQuAD document -> text (the format in the module docstring)."""
    doc = _object(doc, "document")
    if "version" in doc:
        _get(doc, "version", str, "document")
    blocks = []
    for a, article in enumerate(_get(doc, "data", list, "document")):
        where_a = f"data[{a}]"
        article = _object(article, where_a)
        title = _get(article, "title", str, where_a)
        for p, paragraph in enumerate(_get(article, "paragraphs", list, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            paragraph = _object(paragraph, where_p)
            lines = [f"Title: {title}", f"Context: {_get(paragraph, 'context', str, where_p)}"]
            for q, qa in enumerate(_get(paragraph, "qas", list, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qa = _object(qa, where_q)
                lines.append(f"Question: {_get(qa, 'question', str, where_q)}")
                lines.append(_answer_line(qa, where_q))
            blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def render_squad_file(path: str | Path) -> str:
    """Read a SQuAD JSON file and render it; DataError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SQuAD file {path} does not exist; pass the path of a SQuAD JSON file "
                        "(or fetch one with `crystalline data squad --download 2.0`)")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:   # bad UTF-8, bad JSON, huge ints
        raise DataError(f"SQuAD file {path} is not valid JSON: {e}") from None
    try:
        text = render_squad(doc)
    except DataError as e:
        raise DataError(f"SQuAD file {path}: {e}") from None
    if not text:
        raise DataError(f"SQuAD file {path} has no paragraphs; pass a file whose \"data\" is not empty")
    return text


def squad_url(version: str, split: str = "train") -> str:
    """The official URL of a SQuAD file, e.g. .../train-v2.0.json."""
    if version not in SQUAD_VERSIONS:
        raise DataError(f"unknown SQuAD version {version!r}; choose one of {list(SQUAD_VERSIONS)}")
    if split not in SQUAD_SPLITS:
        raise DataError(f"unknown SQuAD split {split!r}; choose one of {list(SQUAD_SPLITS)}")
    return f"{SQUAD_BASE_URL}{split}-v{version}.json"


def download_squad(version: str, dest_dir: str | Path, split: str = "train", *,
                   timeout: float = 30.0, url: str | None = None, progress: bool = True,
                   overwrite: bool = False) -> Path:
    """Fetch the official SQuAD `split` file of `version` into `dest_dir`; returns its path.

    An existing file is kept unless `overwrite`. The download is checked to be SQuAD JSON and
    written atomically. Without a network: DataError saying so and how to proceed by hand.
    """
    from tqdm.auto import tqdm

    from crystalline.io import atomic_write_bytes

    url = url or squad_url(version, split)
    dest = Path(dest_dir) / f"{split}-v{version}.json"
    if dest.is_file() and not overwrite:
        return dest
    manual = (f"download {url} by hand (a browser or curl on a machine with a network), "
              "then pass its path: `crystalline data squad PATH` or load_corpus(\"squad:PATH\")")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            chunks = []
            with tqdm(total=int(total) if total and total.isdigit() else None, unit="B",
                      unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"could not download SQuAD v{version} from {url}: {reason} "
                        f"(no network, or it timed out after {timeout:g} s); {manual}") from None
    data = b"".join(chunks)
    try:
        render_squad(json.loads(data.decode("utf-8")))
    except (ValueError, RecursionError) as e:   # DataError is a ValueError too
        raise DataError(f"the download from {url} is not SQuAD JSON ({e}); {manual}") from None
    return atomic_write_bytes(dest, data)
