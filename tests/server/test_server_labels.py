"""Label files (JSONL, Neuronpedia exports) and search over labels."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from server.model.labels import LabelIndex, stem

D_SAE = 65_536
LABELS = {
    5: "Pirate speech and nautical slang",
    17: "formal tone",
    23: "Cats, kittens and other felines",
    41: "weather forecasts and rain",
    99: "The word 'speech' in political contexts",
    123: "formal dress codes",
    314: "tone of voice in dialogue",
    512: "space exploration and rockets",
    2048: "Python programming syntax",
    4096: "references to treasure maps",
    60000: "questions about the weather",
}


@pytest.fixture(scope="module")
def index() -> LabelIndex:
    return LabelIndex.from_mapping(LABELS, D_SAE)


# ---- files ---------------------------------------------------------------------------------------


def neuronpedia_records() -> list[dict]:
    return [
        {
            "modelId": "llama3.3-70b-it",
            "layer": "50-resid-post-gf",
            "index": str(index),
            "description": label,
            "explanationModelName": "gpt-4o-mini",
            "typeName": "oai_token-act-pair",
        }
        for index, label in LABELS.items()
    ]


def test_jsonl_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    lines = [json.dumps({"index": index, "label": label}) for index, label in LABELS.items()]
    path.write_text("\n".join(lines) + "\n\n")
    loaded = LabelIndex.load(path, D_SAE)
    assert [loaded.label(index) for index in LABELS] == list(LABELS.values())
    assert len(loaded) == len(LABELS)


def test_neuronpedia_export_as_json_array_jsonl_gzip_and_directory(tmp_path: Path) -> None:
    records = neuronpedia_records()
    (tmp_path / "export.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "export.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    batches = tmp_path / "explanations"
    batches.mkdir()
    for number, start in enumerate(range(0, len(records), 4)):
        with gzip.open(batches / f"batch-{number}.jsonl.gz", "wt") as stream:
            stream.write("\n".join(json.dumps(record) for record in records[start : start + 4]))
    for source in ("export.json", "export.jsonl", "explanations"):
        loaded = LabelIndex.load(tmp_path / source, D_SAE)
        assert {index: loaded.label(index) for index in LABELS} == LABELS, source


def test_first_explanation_of_a_feature_wins_and_mapping_files_work(tmp_path: Path) -> None:
    records = [
        {"index": 7, "description": "  "},
        {"index": 7, "description": "first explanation"},
        {"index": "7", "description": "second explanation", "explanationModelName": "other"},
    ]
    (tmp_path / "export.json").write_text(json.dumps(records))
    assert LabelIndex.load(tmp_path / "export.json", 100).label(7) == "first explanation"
    (tmp_path / "mapping.json").write_text(json.dumps({"3": "cats", "4": "dogs"}))
    mapping = LabelIndex.load(tmp_path / "mapping.json", 100)
    assert (mapping.label(3), mapping.label(4)) == ("cats", "dogs")


def test_unlabelled_features_are_named_and_found_by_index() -> None:
    index = LabelIndex.load(None, D_SAE)
    assert index.label(1234) == "feature 1234"
    for query in ("1234", "#1234", "feature 1234", " #1234 "):
        assert index.search(query, top_k=5) == [(1234, 1.0)], query
    assert index.search(str(D_SAE), top_k=5) == []
    assert index.search("pirates", top_k=5) == []
    with pytest.raises(ValueError, match="outside this SAE"):
        index.label(D_SAE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"index": 1, "label": "ok"}\n{"index": 2, "label": \n', "line 2: not valid JSON"),
        ('[{"label": "no index"}]', "item 1: 'index' must be an integer, got None"),
        ('[{"index": 3, "score": 0.4}]', "no label text"),
        ('[{"index": 70000, "label": "too far"}]', "is the label file for a different SAE"),
        ("[1, 2]", "expected an object with 'index' and 'label'"),
    ],
)
def test_bad_label_files_fail_with_the_place(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        LabelIndex.load(path, D_SAE)


def test_missing_label_file_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Label file not found"):
        LabelIndex.load(tmp_path / "nope.jsonl", D_SAE)
    with pytest.raises(ValueError, match="No label files"):
        LabelIndex.load(tmp_path, D_SAE)


# ---- lexical search ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("pirate", 5),
        ("pirates", 5),
        ("Pirate speech", 5),
        ("formal writing", 17),  # ties with 'formal dress codes' break towards the lower index
        ("formal tone", 17),
        ("cat", 23),
        ("kitten", 23),
        ("rain", 41),
        ("weather questions", 60000),
        ("programming", 2048),
        ("program", 2048),  # a prefix of a label word
        ("treasure map", 4096),
    ],
)
def test_lexical_search_finds_the_right_label_first(
    index: LabelIndex, query: str, best: int
) -> None:
    hits = index.search(query, top_k=5)
    assert hits[0][0] == best, hits
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)


def test_whole_phrase_beats_scattered_words(index: LabelIndex) -> None:
    hits = dict(index.search("formal tone", top_k=5))
    assert hits[17] > hits[123] and hits[17] > hits[314]


def test_search_with_no_matching_words_is_empty(index: LabelIndex) -> None:
    assert index.search("zebra", top_k=5) == []
    assert index.search("   ", top_k=5) == []


def test_stemming_joins_word_forms() -> None:
    assert stem("cats") == stem("cat")
    assert stem("pirates") == stem("pirate")
    assert stem("writing") == stem("write")
    assert stem("stories") == stem("story")
    assert stem("glasses") == "glass"
    assert stem("happiness") == stem("happy")
    assert stem("sadness") == stem("sad")


def test_rerank_orders_the_given_features(index: LabelIndex) -> None:
    ranked = index.rerank("weather", [2048, 60000, 41, 5], top_k=3)
    assert [feature for feature, _ in ranked] == [60000, 41, 2048]  # 60000: shorter label
    assert ranked[2][1] == 0.0
    assert index.rerank("#2048", [5, 2048], top_k=2)[0] == (2048, 1.0)
    assert [feature for feature, _ in index.rerank("anything", [9, 8, 9], top_k=5)] == [9, 8]
    with pytest.raises(ValueError, match="outside this SAE"):
        index.rerank("weather", [D_SAE], top_k=1)
