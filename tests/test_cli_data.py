"""`crystalline data info` and `crystalline data squad`, through cli.main and one real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crystalline.cli import main
from crystalline.data import squad

REPO = Path(__file__).resolve().parent.parent
DOC = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "C.", "qas": [
    {"id": "1", "question": "Q?", "answers": [{"text": "A", "answer_start": 0}]},
    {"id": "2", "question": "R?", "answers": [], "is_impossible": True}]}]}]}


def fields(output: str) -> dict:
    """'name:   value' lines -> {name: value}; the values must start in one column."""
    lines = output.strip().splitlines()
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}) == 1   # aligned
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines}


def test_info_subprocess_on_the_bundled_corpus(tmp_path):
    env = dict(os.environ, CRYSTALLINE_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "crystalline", "data", "info", "data/tinyshakespeare.txt"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = fields(done.stdout)
    assert info["bytes"] == "1,115,394" and info["tokens"] == "1,115,394"
    assert info["vocabulary size"] == "256" and info["tokenizer"] == "byte"


def test_info_folder_and_word_tokenizer(tmp_path, capsys):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("the cat sat\n")
    (tmp_path / "corpus" / "sub" / "b.txt").write_text("The dog\n")
    (tmp_path / "corpus" / "pic.txt").write_bytes(b"\x89PNG\0\0")
    assert main(["data", "info", str(tmp_path / "corpus"), "--tokenizer", "word",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    info = fields(capsys.readouterr().out)
    assert info == {"source": str(tmp_path / "corpus"), "files": "2", "bytes": "20", "tokens": "5",
                    "vocabulary size": "9", "tokenizer": "word", "bytes per token": "4.000"}


def test_info_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crystalline: error: corpus") and "does not exist" in err and err.count("\n") == 1


def test_squad_to_stdout_and_to_file(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(DOC))
    expected = "Title: T\nContext: C.\nQuestion: Q?\nAnswer: A\nQuestion: R?\nAnswer: (no answer)\n"
    assert main(["data", "squad", str(path)]) == 0
    assert capsys.readouterr().out == expected
    assert main(["data", "squad", str(path), "-o", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text() == expected


def test_squad_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}))
    assert main(["data", "squad", str(bad)]) == 2
    assert 'data[0].paragraphs[0]: missing key "context"' in capsys.readouterr().err
    assert main(["data", "squad"]) == 2
    assert "either PATH" in capsys.readouterr().err
    assert main(["data", "squad", str(bad), "--download", "2.0"]) == 2
    with pytest.raises(SystemExit):
        main(["data", "squad", "--download", "3.0"])


def test_squad_download_offline(tmp_path, capsys, monkeypatch):
    def no_network(url, timeout):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(squad.urllib.request, "urlopen", no_network)
    assert main(["data", "squad", "--download", "1.1", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train-v1.1.json" in err and "no network" in err and "by hand" in err


def test_help_lists_the_actions(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "squad" in out
