"""`ember-bot serve`'s engine options: contradictions and a missing vLLM are one clear line,
before anything loads. (The vLLM engine itself is tested in tests/vllm, in its own venv.)"""

from __future__ import annotations

import importlib.util

import pytest

from server.cli import main

VLLM_INSTALLED = all(importlib.util.find_spec(name) for name in ("vllm", "vllm_lens"))


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size and --pipeline-parallel-size"),
        (["--pipeline-parallel-size", "2"], "need --engine vllm"),
        (["--engine", "vllm", "--quantize", "8bit"], "drop --device-map and --quantize"),
        (["--engine", "vllm", "--device-map", "auto"], "places and shards the model itself"),
    ],
)
def test_contradicting_engine_options_are_one_line(argv, line, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "0", *argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ember-bot serve: error: ") and line in error


@pytest.mark.skipif(VLLM_INSTALLED, reason="vLLM is installed in this environment")
def test_missing_vllm_names_the_install(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--port", "0", "--engine", "vllm"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--engine vllm needs vllm and vllm_lens: pip install 'ember-bot[vllm]'" in error
