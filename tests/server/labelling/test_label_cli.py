"""`ember-bot label` on the tiny model (issue #16): collection, labels, scores, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.label_cli import main
from server.labelling.collect import CollectConfig, Collection, collect, fingerprint
from server.labelling.corpus import Corpus
from server.labelling.output import WorkFolder
from server.model.presets import TINY_PLANTED, load_bundle
from tests.server.labelling.conftest import BATCH_SIZE, FEATURES, PLANTED
from tests.server.labelling.fake_explainer import FakeExplainer
from tests.server.labelling.tiny_on_disk import RANDOM_FEATURES


def read(path: Path) -> dict[int, dict]:
    return {record["index"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_top_contexts_of_every_planted_feature_peak_on_its_topic_words(tiny_bundle, tmp_path):
    from tests.server.labelling.corpus import write_corpus

    corpus = Corpus.open(str(write_corpus(tmp_path / "corpus.txt")))
    collection = Collection(PLANTED, CollectConfig(), tiny_bundle.sae.W_enc.device)
    stamp = fingerprint(tiny_bundle, corpus, collection.config, PLANTED)
    collect(tiny_bundle, corpus, collection, checkpoint=tmp_path / "c.pt", fingerprint=stamp)
    for label, (index, words) in TINY_PLANTED.items():
        top = collection.top_examples(PLANTED.index(index))
        assert len(top) >= 5, label
        for example in top:
            peak = max(range(len(example.tokens)), key=example.activations.__getitem__)
            word = tiny_bundle.tokenizer.decode([example.tokens[peak]]).strip().lower()
            assert word in words, (label, word)


def test_labels_name_each_planted_topic_and_scores_separate_random_features(label_files):
    labels = read(label_files.labels)
    for topic, (index, _) in TINY_PLANTED.items():
        record = labels[index]
        assert record["label"].startswith(f"{topic}: "), record
        assert record["explainer"] == "fake-explainer" and record["source"] == "ember-bot label"
    planted = [labels[index]["score"] for index in PLANTED]
    scattered = [labels[index]["score"] for index in RANDOM_FEATURES]
    assert min(planted) >= 0.9
    assert min(planted) > max(scattered)
    assert sum(scattered) / len(scattered) < 0.8


def test_collection_stopped_midway_then_resumed_gives_the_same_labels(label_files, tmp_path):
    out = tmp_path / "labels.jsonl"
    work = WorkFolder(out)
    work.create()
    bundle = load_bundle(str(label_files.model), str(label_files.sae), 1, None)
    corpus = Corpus.open(str(label_files.corpus))
    features = [int(index) for index in FEATURES.split(",")]
    collection = Collection(
        sorted(features), CollectConfig(batch_size=int(BATCH_SIZE)), bundle.sae.W_enc.device
    )
    batches = 0

    def stop_after_two(_windows: int, _bytes: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise KeyboardInterrupt

    stamp = fingerprint(bundle, corpus, collection.config, collection.features)
    with pytest.raises(KeyboardInterrupt):
        collect(bundle, corpus, collection, checkpoint=work.checkpoint, fingerprint=stamp,
                checkpoint_every=0, on_batch=stop_after_two)  # fmt: skip
    with FakeExplainer() as fake:
        assert main(label_files.argv(out, fake.url)) == 1  # no --resume: refused, untouched
        assert work.checkpoint.exists() and not out.exists()
        assert main(label_files.argv(out, fake.url, "--resume")) == 0
    assert read(out) == read(label_files.labels)
    assert not work.exists()


def test_explainer_outage_midway_then_resume_gives_the_same_labels(label_files, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    with FakeExplainer(down_after=12) as fake:  # three requests a feature, one at a time
        assert main(label_files.argv(out, fake.url, "--concurrency", "1")) == 1
    error = capsys.readouterr().err
    assert "failing (HTTP 503)" in error and "--resume" in error
    assert not out.exists() and 0 < len(WorkFolder(out).finished()) < len(read(label_files.labels))
    with FakeExplainer() as fake:
        assert main(label_files.argv(out, fake.url, "--resume")) == 0
    assert read(out) == read(label_files.labels)
