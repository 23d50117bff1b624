"""Feature search as the API serves it (server/model/search/): label embeddings under a
sentence-embedding model the test builds, their disk cache, the blend with lexical ranking,
and always exactly `top_k` results. Activation search on the tiny model: test_search_by_activation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.model.labels import LabelIndex
from server.model.search.blend import FeatureSearch
from server.model.search.cache import SEARCH_CACHE_ENV
from tests.support.embedder_repo import embedder_files, write_embedder

D_SAE = 50  # some features unlabelled
PIRATE, KITTENS, FELINES, JOY, WEATHER = 3, 10, 11, 17, 30
LABELS = {
    PIRATE: "Pirate speech and nautical slang",
    7: "formal tone in letters",
    KITTENS: "kittens at play",
    FELINES: "felines in the wild",
    JOY: "happiness and joy",
    21: "python programming syntax",
    WEATHER: "weather forecasts and rain",
    44: "the word 'speech' in political contexts",
}
CONCEPTS = {
    "sea": ("pirate", "nautical", "sailor", "ship", "sea"),
    "cat": ("kittens", "kitten", "felines", "feline", "cat"),
    "joy": ("happiness", "joy", "cheerful", "glad"),
    "sky": ("weather", "rain", "storm", "cloudy"),
}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("all-MiniLM-stand-in")
    return write_embedder(folder, embedder_files(CONCEPTS, LABELS.values()))


@pytest.fixture
def labels_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(SEARCH_CACHE_ENV, str(tmp_path / "search-cache"))
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps({"index": i, "label": t}) for i, t in LABELS.items()))
    return path


def search(engine: FeatureSearch, query: str, top_k: int = 5) -> list[int]:
    return [index for index, _ in asyncio.run(engine.search(query, top_k))]


def test_semantic_search_finds_labels_that_share_no_word_with_the_query(
    labels_file: Path, embedder: Path
) -> None:
    engine = FeatureSearch(LabelIndex.load(labels_file, D_SAE, embedding=embedder))
    assert engine.mode == f"semantic ({embedder.name}) + lexical"
    assert search(engine, "sailor")[0] == PIRATE
    assert search(engine, "cheerful")[0] == JOY
    assert search(engine, "storm")[0] == WEATHER
    assert search(engine, "#21")[0] == 21


def test_exact_words_are_blended_in(labels_file: Path, embedder: Path) -> None:
    engine = FeatureSearch(LabelIndex.load(labels_file, D_SAE, embedding=embedder))
    # Both labels mean cats; the one that has the query's word comes first.
    assert search(engine, "kittens")[:2] == [KITTENS, FELINES]
    assert search(engine, "felines")[:2] == [FELINES, KITTENS]
    # Lexical alone finds only labels sharing a word; the blend also ranks the rest.
    assert LabelIndex.load(labels_file, D_SAE).search("sailor", top_k=5) == []


def test_label_embeddings_are_computed_once_then_read_from_the_cache(
    labels_file: Path, embedder: Path, tmp_path: Path
) -> None:
    said: list[str] = []
    first = LabelIndex.load(labels_file, D_SAE, embedding=embedder, say=said.append)
    assert first.embeddings is not None and not first.embeddings.from_cache
    assert said == [
        f"search: embedding {len(LABELS)} labels with {embedder.name} (first start only)"
    ]
    (cached,) = (tmp_path / "search-cache").rglob("*.npz")
    written = cached.stat().st_mtime_ns

    said.clear()
    second = LabelIndex.load(labels_file, D_SAE, embedding=embedder, say=said.append)
    assert second.embeddings is not None and second.embeddings.from_cache
    assert said == []  # nothing embedded
    assert cached.stat().st_mtime_ns == written
    assert np.allclose(first.embeddings.vectors, second.embeddings.vectors, atol=1e-3)
    assert search(FeatureSearch(second), "sailor")[0] == PIRATE

    labels_file.write_text(json.dumps({"index": 1, "label": "a different label set"}))
    third = LabelIndex.load(labels_file, D_SAE, embedding=embedder)
    assert third.embeddings is not None and not third.embeddings.from_cache
    assert len(list((tmp_path / "search-cache").rglob("*.npz"))) == 2


def test_an_embedding_model_that_cannot_be_read_leaves_search_lexical(
    labels_file: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    said: list[str] = []
    index = LabelIndex.load(labels_file, D_SAE, embedding=broken, say=said.append)
    assert index.embeddings is None
    assert len(said) == 1 and said[0].startswith("search: lexical only (cannot load")
    engine = FeatureSearch(index)
    assert engine.mode == "lexical"
    assert search(engine, "pirates")[0] == PIRATE


@pytest.fixture(scope="module")
def semantic_engine(embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureSearch:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SEARCH_CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        path = tmp_path_factory.mktemp("labels") / "labels.json"
        path.write_text(json.dumps({str(index): label for index, label in LABELS.items()}))
        return FeatureSearch(LabelIndex.load(path, D_SAE, embedding=embedder))


@settings(max_examples=60, deadline=None)
@given(query=st.text(max_size=40), top_k=st.integers(min_value=1, max_value=2 * D_SAE))
def test_search_returns_exactly_top_k_distinct_features_for_any_query(
    semantic_engine: FeatureSearch, query: str, top_k: int
) -> None:
    lexical = FeatureSearch(LabelIndex.from_mapping(LABELS, D_SAE))
    for engine in (semantic_engine, lexical):
        hits = asyncio.run(engine.search(query, top_k))
        indices = [index for index, _ in hits]
        assert len(indices) == min(top_k, D_SAE) == len(set(indices))
        relevance = [score for _, score in hits]
        assert all(0 <= score <= 1 for score in relevance)
        assert all(a >= b - 1e-5 for a, b in zip(relevance, relevance[1:], strict=False))
        named = engine.labels.index_query(query)  # '#12', '12': that feature first
        assert named is None or indices[0] == named
        labelled = [index in LABELS for index in indices if index != named]
        assert labelled == sorted(labelled, reverse=True)  # unlabelled ones after the rest


def test_rerank_orders_only_the_given_features(semantic_engine: FeatureSearch) -> None:
    ranked = asyncio.run(semantic_engine.rerank("sailor", [21, JOY, PIRATE, 21], top_k=2))
    assert ranked[0][0] == PIRATE and ranked[1][0] in (21, JOY)
    with pytest.raises(ValueError, match="outside this SAE"):
        asyncio.run(semantic_engine.rerank("sailor", [D_SAE], top_k=1))
