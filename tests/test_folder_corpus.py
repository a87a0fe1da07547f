"""Folder corpora: which files are taken and which skipped (and why), `data info --list`, a huge
binary file costing one small read, and the corpus's SHA-256."""

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from crystalline.cli import main
from crystalline.data.corpus import folder_entries, load_corpus
from crystalline.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def test_a_huge_binary_file_is_skipped_after_reading_its_head_only(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"some text\n" * 100)
    with open(tmp_path / "disk.img", "wb") as f:            # 256 MiB of zeros, sparse on disk
        f.truncate(256 << 20)
    tracemalloc.start()
    try:
        corpus = load_corpus(tmp_path, cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert corpus.num_files == 1 and corpus.num_bytes == 1000
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB: the whole file was read"


def test_what_a_folder_takes_and_skips(tmp_path):
    (tmp_path / "notes" / ".git").mkdir(parents=True)
    files = {"README.md": b"# About these texts\n", "LICENSE": b"MIT\n", "licence.txt": b"x\n",
             "Copying.rst": b"GPL\n", "notes/README": b"nested readme\n", "notes/.git/HEAD": b"ref\n",
             "readme_notes.txt": b"taken: the name before the first dot is not README\n",
             "story.md": b"Once upon a time.\n", "image.png": b"\x89PNG\r\n\x1a\n\0\0",
             ".DS_Store": b"\0\0"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "pipe")                         # opening it would block: never opened
    entries = {e.name: e.skipped for e in folder_entries(tmp_path)}
    assert entries == {
        ".DS_Store": "hidden", "Copying.rst": "README/LICENSE-like name",
        "LICENSE": "README/LICENSE-like name", "README.md": "README/LICENSE-like name",
        "image.png": "binary", "licence.txt": "README/LICENSE-like name",
        "notes/.git/": "hidden", "notes/README": "README/LICENSE-like name",
        "pipe": "not a regular file", "readme_notes.txt": "", "story.md": ""}
    assert [e.name for e in folder_entries(tmp_path)] == sorted(entries, key=lambda n: n.split("/"))
    corpus = load_corpus(tmp_path, cache_dir=tmp_path / "cache")
    expected = files["readme_notes.txt"] + files["story.md"]
    assert corpus.tokenizer.decode(corpus.tokens) == expected.decode()
    assert corpus.num_files == 2 and corpus.sha256 == hashlib.sha256(expected).hexdigest()


def test_the_error_for_a_folder_without_text_counts_each_reason(tmp_path):
    (tmp_path / "README.md").write_text("about\n")
    (tmp_path / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match=r"no text files \(skipped: 1 README/LICENSE-like name, 1 binary\)"):
        load_corpus(tmp_path, cache_dir=tmp_path / "cache")


def test_an_empty_corpus_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                          # "" would otherwise read the current folder
    (tmp_path / "a.txt").write_text("text\n")
    with pytest.raises(DataError, match="corpus path is empty"):
        load_corpus("")


def test_data_info_lists_the_repository_data_folder(capsys):
    assert main(["data", "info", str(REPO / "data"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["skip  README.md  (README/LICENSE-like name)", "take  tinyshakespeare.txt"]
    info = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[2:]}
    assert info["files"] == "1" and info["bytes"] == "1,115,394" and info["tokens"] == "1,115,394"
