"""Feature labels: loading label files, and the lexical search over them.

Accepted files (plain or `.gz`; a directory loads every such file in it):
- JSONL, one `{"index": 12, "label": "pirate speech"}` per line;
- Neuronpedia explanation exports: a JSON array (or JSONL) of objects with `index` (int or
  string) and `description`, plus fields we ignore (`modelId`, `explanationModelName`, ...);
- a JSON object mapping index to label, `{"12": "pirate speech"}`.

`LabelIndex.search` is the lexical search alone (BM25, see search/lexical.py): only labels that
share a word with the query. What the API serves is server/model/search/blend.py, which blends
it with the labels' embeddings (loaded here, with the labels) and activation search, and always
fills `top_k`. A query that is a number (`123`, `#123`) finds that feature; features without a
label are called "feature N" and are reachable by index.
"""

from __future__ import annotations

import gzip
import heapq
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.model.search.embeddings import DEFAULT_EMBEDDING_MODEL
from server.model.search.lexical import Bm25, stem, terms

if TYPE_CHECKING:
    from server.model.search.cache import LabelEmbeddings

__all__ = ["DEFAULT_EMBEDDING_MODEL", "LabelIndex", "read_label_file", "stem", "terms"]

LABEL_KEYS = ("label", "description", "explanation")
LABEL_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
INDEX_QUERY = re.compile(r"^\s*(?:#|feature\s*#?\s*)?(\d+)\s*$", re.IGNORECASE)


class LabelIndex:
    """The labels of one SAE's features, searchable by their words; `embeddings` when loaded
    with an embedding model."""

    def __init__(
        self,
        labels: dict[int, str],
        d_sae: int,
        embeddings: LabelEmbeddings | None = None,
    ) -> None:
        for index in labels:
            check_index(index, d_sae)
        self.d_sae = d_sae
        self.texts = {index: text for index, text in labels.items() if text.strip()}
        self.scores: dict[int, float] = {}  # detection scores of generated labels, if any
        self.embeddings = embeddings
        self._lexical = Bm25(self.texts)

    @classmethod
    def from_mapping(cls, labels: dict[int, str], d_sae: int) -> LabelIndex:
        return cls(labels, d_sae)

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        d_sae: int,
        *,
        embedding: Path | None = None,
        device: str = "cpu",
        say: Callable[[str], None] | None = None,
    ) -> LabelIndex:
        """Labels from `path` (None: index-only labels), with their embeddings under the
        sentence-embedding model in folder `embedding` when given (computed on the first start,
        then read from the search cache). A model that cannot be loaded leaves search lexical;
        `say` tells why."""
        labels = read_label_file(Path(path), d_sae) if path is not None else {}
        labels = {index: text for index, text in labels.items() if text.strip()}
        if embedding is None or not labels:
            return cls(labels, d_sae)
        from server.model.search.cache import LabelEmbeddings
        from server.model.search.embeddings import SentenceEmbedder

        try:
            embedder = SentenceEmbedder.load(embedding, device)
        except ValueError as error:
            if say is not None:
                say(f"search: lexical only ({error})")
            return cls(labels, d_sae)
        return cls(labels, d_sae, LabelEmbeddings.build(embedder, labels, say=say))

    def __len__(self) -> int:
        return len(self.texts)

    def label(self, index: int) -> str:
        check_index(index, self.d_sae)
        return self.texts.get(index) or f"feature {index}"

    def lexical_scores(self, query: str) -> dict[int, float]:
        """BM25 relevance (0..1) of every label that shares a word with `query`."""
        return self._lexical.scores(query)

    def lexical_relevance(self, query: str) -> np.ndarray:
        """BM25 relevance (0..1) of every feature to `query`, as a d_sae-long array."""
        return self._lexical.relevance(query, self.d_sae)

    def search(self, query: str, top_k: int) -> list[tuple[int, float]]:
        """The `top_k` features whose labels best match `query`'s words, as (index, relevance
        0..1); only those that match at all."""
        if (index := self.index_query(query)) is not None:
            return [(index, 1.0)]
        scores = self.lexical_scores(query)
        best = heapq.nsmallest(top_k, scores.items(), key=lambda item: (-item[1], item[0]))
        return [(index, score) for index, score in best if score > 0]

    def rerank(self, query: str, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]:
        """`indices` ordered by relevance to `query` (ties keep their given order), first top_k."""
        for index in indices:
            check_index(index, self.d_sae)
        scores = self.lexical_scores(query)
        if (exact := self.index_query(query)) is not None:
            scores[exact] = 1.0
        unique = list(dict.fromkeys(indices))
        ranked = sorted(unique, key=lambda index: -scores.get(index, 0.0))
        return [(index, scores.get(index, 0.0)) for index in ranked[:top_k]]

    def index_query(self, query: str) -> int | None:
        """The feature `query` names by number (`123`, `#123`, `feature 123`), if any."""
        match = INDEX_QUERY.match(query)
        if match is None or int(match.group(1)) >= self.d_sae:
            return None
        return int(match.group(1))


def check_index(index: int, d_sae: int) -> None:
    if not 0 <= index < d_sae:
        raise ValueError(f"Feature index {index} is outside this SAE (features 0-{d_sae - 1}).")


# ---- label files -------------------------------------------------------------------------------


def read_label_file(path: Path, d_sae: int) -> dict[int, str]:
    """Labels from a JSONL / Neuronpedia export / JSON mapping file, or a directory of them:
    published labels before generated ones, then the first file's (server/labelling/sources.py)."""
    from server.labelling.sources import read_label_entries  # it reads records with this module

    return {index: entry.text for index, entry in read_label_entries(path, d_sae).items()}


def _records(file: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read label file {file}: {error}") from error
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # not one JSON document: JSON Lines
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield f"{file} line {number}", _parse_json(line, f"{file} line {number}")
        return
    if isinstance(document, dict) and "index" not in document:
        document = [{"index": key, "label": value} for key, value in document.items()]
    for position, record in enumerate(document if isinstance(document, list) else [document]):
        yield f"{file} item {position + 1}", record


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg}).") from error


def _parse_record(record: Any, where: str) -> tuple[int, str]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with 'index' and 'label'.")
    raw_index = record.get("index")
    try:
        index = int(raw_index)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'index' must be an integer, got {raw_index!r}.") from None
    text = next((record[key] for key in LABEL_KEYS if isinstance(record.get(key), str)), None)
    if text is None:
        raise ValueError(f"{where}: no label text (expected one of {', '.join(LABEL_KEYS)}).")
    return index, text.strip()


def _check_record_index(index: int, d_sae: int, where: str) -> None:
    if not 0 <= index < d_sae:
        raise ValueError(
            f"{where}: feature index {index} is outside this SAE (features 0-{d_sae - 1}); "
            "is the label file for a different SAE?"
        )
