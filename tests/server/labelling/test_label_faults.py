"""Bad input to `ember-bot label`: one clear line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import socket
from pathlib import Path

from server.label_cli import main
from tests.server.labelling.conftest import LabelFiles
from tests.server.labelling.fake_explainer import FakeExplainer
from tests.support.sae_formats import Weights, write_saelens


def refused(label_files: LabelFiles, out: Path, argv: list[str], capsys) -> str:
    """Run, expect exit 1 with exactly one error line, and no label file written."""
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "ember-bot label:" in line]
    assert len(lines) == 1, lines
    assert not out.exists()
    return lines[0]


def test_a_corpus_that_does_not_exist(label_files, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    argv = label_files.argv(out, "http://127.0.0.1:9/v1")
    argv[argv.index("--corpus") + 1] = str(tmp_path / "missing.txt")
    line = refused(label_files, out, argv, capsys)
    assert f"Corpus not found: {tmp_path / 'missing.txt'}" in line
    assert list(tmp_path.iterdir()) == []


def test_an_explainer_that_is_down(label_files, tmp_path, capsys):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "labels.jsonl"
    line = refused(label_files, out, label_files.argv(out, f"http://127.0.0.1:{port}/v1"), capsys)
    assert f"The explainer at http://127.0.0.1:{port}/v1/models is not reachable" in line
    assert list(tmp_path.iterdir()) == []  # checked before any collecting


def test_an_explainer_that_answers_nonsense(label_files, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    with FakeExplainer("nonsense") as fake:
        line = refused(label_files, out, label_files.argv(out, fake.url), capsys)
    assert "does not answer in the shape asked for" in line
    assert "'I like turtles.' is not a list of 0s and 1s" in line


def test_an_explainer_that_is_not_openai_compatible(label_files, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    with FakeExplainer("not-openai") as fake:
        line = refused(label_files, out, label_files.argv(out, fake.url), capsys)
    assert "did not answer with an OpenAI chat completion (got '<html>Welcome" in line


def test_an_sae_the_model_does_not_fit(label_files, tmp_path, capsys):
    wrong = write_saelens(tmp_path / "wrong", Weights.random(d_in=16, d_sae=64))
    out = tmp_path / "labels.jsonl"
    argv = label_files.argv(out, "http://127.0.0.1:9/v1")
    argv[argv.index("--sae") + 1] = str(wrong)
    line = refused(label_files, out, argv, capsys)
    assert "The SAE reads vectors of size 16" in line and "residual stream has size 128" in line


def test_the_default_explainer_is_the_served_model_through_its_chat_endpoint(
    label_files, tmp_path, capsys
):
    """The tiny model talks word salad, so its answers are refused; that they reach the check
    shows the default explainer is the labelled model behind our own chat route."""
    out = tmp_path / "labels.jsonl"
    argv = ["--preset", "tiny", "--corpus", str(label_files.corpus), "--out", str(out)]
    line = refused(label_files, out, [*argv, "--features", "37", "--quiet"], capsys)
    assert "The explainer (ember-tiny) does not answer in the shape asked for" in line
