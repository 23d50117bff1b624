"""The corpus: text and JSONL files, folders of them, and what is refused."""

from __future__ import annotations

import json

import pytest

from server.labelling.corpus import Corpus, CorpusError, windows
from server.model.tiny.build import build_tiny_parts


def test_documents_from_text_and_jsonl_files_in_a_folder_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "the cat"}) + "\n\n")
    (tmp_path / "a.txt").write_text("the dog\nran\n\n\nthe sea\n")
    (tmp_path / "notes.md").write_text("not corpus")
    corpus = Corpus.open(str(tmp_path))
    assert [text for text, _ in corpus.documents()] == ["the dog\nran", "the sea", "the cat"]
    assert corpus.size_bytes == sum(p.stat().st_size for p in corpus.files)


def test_windows_never_span_documents_and_skip_resumes_at_the_same_window(tmp_path):
    tokenizer = build_tiny_parts().tokenizer
    (tmp_path / "c.txt").write_text("the cat sees the dog here\n\na dog ran\n")
    corpus = Corpus.open(str(tmp_path / "c.txt"))
    every = [window for window, _ in windows(corpus, tokenizer, 4)]
    assert [len(window) for window in every] == [4, 2, 3]
    assert [window for window, _ in windows(corpus, tokenizer, 4, skip=1)] == every[1:]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json\n", "line 1: not valid JSON"),
        (json.dumps({"body": "x"}) + "\n", "line 1: expected an object with a 'text' string"),
    ],
)
def test_a_bad_jsonl_line_is_named(tmp_path, content, problem):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=problem):
        list(Corpus.open(str(tmp_path / "c.jsonl")).documents())


def test_an_empty_folder_and_a_nameless_dataset_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="holds no .txt or .jsonl files"):
        Corpus.open(str(tmp_path))
    with pytest.raises(CorpusError, match="name a dataset"):
        Corpus.open("hf:")
