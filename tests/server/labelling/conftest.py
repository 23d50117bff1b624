"""Shared files for the labelling tests: a corpus, the tiny model on disk with random features,
and one complete labelling run over them (once a session: the runs are the slow part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from server.label_cli import main
from server.model.presets import TINY_PLANTED
from tests.server.labelling.corpus import write_corpus
from tests.server.labelling.fake_explainer import FakeExplainer
from tests.server.labelling.tiny_on_disk import RANDOM_FEATURES, write_tiny

PLANTED = sorted(index for index, _ in TINY_PLANTED.values())
FEATURES = ",".join(str(index) for index in [*RANDOM_FEATURES, *PLANTED])
BATCH_SIZE = "8"


@dataclass(frozen=True)
class LabelFiles:
    folder: Path
    corpus: Path
    model: Path
    sae: Path
    labels: Path  # the uninterrupted run's output

    def argv(self, out: Path, explainer: str, *extra: str) -> list[str]:
        return [
            "--model", str(self.model), "--sae", str(self.sae), "--layer", "1",
            "--corpus", str(self.corpus), "--out", str(out), "--explainer", explainer,
            "--features", FEATURES, "--batch-size", BATCH_SIZE, "--quiet",
            "--explainer-retries", "0", *extra,
        ]  # fmt: skip


@pytest.fixture(scope="session")
def label_files(tmp_path_factory: pytest.TempPathFactory) -> LabelFiles:
    folder = tmp_path_factory.mktemp("label")
    corpus = write_corpus(folder / "corpus.txt")
    model, sae = write_tiny(folder, corpus)
    files = LabelFiles(folder, corpus, model, sae, folder / "labels.jsonl")
    with FakeExplainer() as fake:
        assert main(files.argv(files.labels, fake.url)) == 0
    return files
