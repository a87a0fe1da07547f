"""SQuAD v1.1/v2.0 rendering, malformed files, and the download's no-network error."""

import io
import json
import urllib.error

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalline.data import squad
from crystalline.data.squad import NO_ANSWER, download_squad, render_squad, render_squad_file
from crystalline.errors import DataError

V11 = {"version": "1.1", "data": [
    {"title": "Normans", "paragraphs": [
        {"context": "The Normans gave their name to Normandy, a region in France.",
         "qas": [{"id": "q1", "question": "In what country is Normandy located?",
                  "answers": [{"text": "France", "answer_start": 55},
                              {"text": "in France", "answer_start": 52}]},
                 {"id": "q2", "question": "Who gave their name to Normandy?",
                  "answers": [{"text": "The Normans", "answer_start": 0}]}]},
        {"context": "Rollo was a Viking.", "qas": []}]},
    {"title": "Oxygen", "paragraphs": [
        {"context": "Oxygen is element 8.",
         "qas": [{"id": "q3", "question": "Which element is 8?",
                  "answers": [{"text": "Oxygen", "answer_start": 0}]}]}]}]}

V20 = {"version": "v2.0", "data": [
    {"title": "Normans", "paragraphs": [
        {"context": "The Normans gave their name to Normandy.",
         "qas": [{"id": "a", "question": "What did the Normans name?", "is_impossible": False,
                  "answers": [{"text": "Normandy", "answer_start": 31}]},
                 {"id": "b", "question": "Who named Paris?", "is_impossible": True, "answers": [],
                  "plausible_answers": [{"text": "The Normans", "answer_start": 0}]}]}]}]}


def write(tmp_path, doc, name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_v11_renders_title_context_question_first_answer(tmp_path):
    text = render_squad_file(write(tmp_path, V11))
    assert text == (
        "Title: Normans\n"
        "Context: The Normans gave their name to Normandy, a region in France.\n"
        "Question: In what country is Normandy located?\n"
        "Answer: France\n"
        "Question: Who gave their name to Normandy?\n"
        "Answer: The Normans\n"
        "\n"
        "Title: Normans\n"
        "Context: Rollo was a Viking.\n"
        "\n"
        "Title: Oxygen\n"
        "Context: Oxygen is element 8.\n"
        "Question: Which element is 8?\n"
        "Answer: Oxygen\n")


def test_v20_unanswerable_question_gets_the_no_answer_line(tmp_path):
    text = render_squad_file(write(tmp_path, V20))
    assert text == (
        "Title: Normans\n"
        "Context: The Normans gave their name to Normandy.\n"
        "Question: What did the Normans name?\n"
        "Answer: Normandy\n"
        "Question: Who named Paris?\n"
        f"Answer: {NO_ANSWER}\n")
    assert "The Normans\n" not in text            # plausible answers are not rendered as answers


def mutate(doc, path, action):
    doc = json.loads(json.dumps(doc))
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    if action == "delete":
        del target[last]
    else:
        target[last] = action
    return doc


@pytest.mark.parametrize("path, action, message", [
    (["data", 0, "paragraphs", 0, "qas", 1, "question"], "delete",
     'data[0].paragraphs[0].qas[1]: missing key "question"'),
    (["data", 1, "title"], "delete", 'data[1]: missing key "title"'),
    (["data", 0, "paragraphs", 1, "context"], 7, "data[0].paragraphs[1].context: expected a string, got int"),
    (["data", 0, "paragraphs", 0, "qas", 0, "answers", 1, "text"], "delete",
     'data[0].paragraphs[0].qas[0].answers[1]: missing key "text"'),
    (["data", 0, "paragraphs", 0, "qas", 0, "answers"], [], "qas[0].answers: empty"),
    (["data", 0, "paragraphs", 0, "qas", 0, "is_impossible"], "yes",
     "qas[0].is_impossible: expected true or false"),
    (["data", 0, "paragraphs", 0, "qas", 0, "answers", 0, "answer_start"], True,
     "answers[0].answer_start: expected an integer, got bool"),
    (["data", 1, "paragraphs"], {}, "data[1].paragraphs: expected a list"),
    (["data", 1], "Oxygen", "data[1]: expected an object, got str"),
    (["data"], "delete", 'document: missing key "data"'),
])
def test_malformed_squad_names_the_key_and_where(tmp_path, path, action, message):
    bad = write(tmp_path, mutate(V11, path, action))
    with pytest.raises(DataError) as info:
        render_squad_file(bad)
    assert message in str(info.value) and str(bad) in str(info.value)


@pytest.mark.parametrize("content, match", [
    (b'{"data": [', "not valid JSON"), (b"\xff{}", "not valid JSON"),
    (b"[]", "expected an object"), (b'{"data": []}', "no paragraphs")])
def test_unreadable_squad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        render_squad_file(path)
    with pytest.raises(DataError, match="does not exist"):
        render_squad_file(tmp_path / "missing.json")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)
ANSWER = st.fixed_dictionaries({"text": st.text(max_size=5) | JSON}, optional={"answer_start": st.integers() | JSON})
QA = st.fixed_dictionaries({"question": st.text(max_size=5) | JSON, "answers": st.lists(ANSWER, max_size=2) | JSON},
                           optional={"is_impossible": st.booleans() | JSON, "id": JSON})
PARAGRAPH = st.fixed_dictionaries({"context": st.text(max_size=5) | JSON, "qas": st.lists(QA, max_size=2) | JSON})
ARTICLE = st.fixed_dictionaries({"title": st.text(max_size=5) | JSON,
                                 "paragraphs": st.lists(PARAGRAPH | JSON, max_size=2) | JSON})
DOC = st.fixed_dictionaries({"data": st.lists(ARTICLE | JSON, max_size=2) | JSON},
                            optional={"version": st.text(max_size=4) | JSON}) | JSON


@settings(max_examples=300, deadline=None)
@given(DOC)
def test_squad_shaped_documents_render_or_raise_data_error(doc):
    try:
        text = render_squad(doc)
    except DataError as e:
        assert str(e)
    else:
        assert isinstance(text, str)


def test_download_without_network_says_so_and_suggests_a_manual_download(tmp_path, monkeypatch):
    def no_network(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(squad.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as info:
        download_squad("2.0", tmp_path, progress=False)
    message = str(info.value)
    assert "train-v2.0.json" in message and "no network" in message and "by hand" in message
    assert list(tmp_path.iterdir()) == []                   # nothing half-written


def test_download_of_an_unreachable_url_fails_fast(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download_squad("1.1", tmp_path, url="http://127.0.0.1:9/train-v1.1.json", timeout=2, progress=False)


class FakeResponse(io.BytesIO):
    headers = {"Content-Length": "0"}


def test_download_writes_the_checked_file_atomically(tmp_path, monkeypatch):
    body = json.dumps(V20).encode()
    seen = []

    def fake_urlopen(url, timeout):
        seen.append(url)
        response = FakeResponse(body)
        response.headers = {"Content-Length": str(len(body))}
        return response
    monkeypatch.setattr(squad.urllib.request, "urlopen", fake_urlopen)
    path = download_squad("2.0", tmp_path / "sq", split="dev", progress=False)
    assert seen == ["https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json"]
    assert path == tmp_path / "sq" / "dev-v2.0.json" and path.read_bytes() == body
    assert download_squad("2.0", tmp_path / "sq", split="dev", progress=False) == path   # kept, not fetched
    assert len(seen) == 1
    monkeypatch.setattr(squad.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"<html>"))
    with pytest.raises(DataError, match="not SQuAD JSON"):
        download_squad("1.1", tmp_path / "sq", progress=False)
    assert sorted(p.name for p in (tmp_path / "sq").iterdir()) == ["dev-v2.0.json"]


def test_unknown_version_or_split():
    with pytest.raises(DataError, match="version"):
        download_squad("3.0", ".")
    with pytest.raises(DataError, match="split"):
        download_squad("2.0", ".", split="test")
