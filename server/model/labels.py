"""Feature labels: loading label files, and finding features by what their labels say.

Accepted files (plain or `.gz`; a directory loads every such file in it):
- JSONL, one `{"index": 12, "label": "pirate speech"}` per line;
- Neuronpedia explanation exports: a JSON array (or JSONL) of objects with `index` (int or
  string) and `description`, plus fields we ignore (`modelId`, `explanationModelName`, ...);
- a JSON object mapping index to label, `{"12": "pirate speech"}`.

Search ranks labels with BM25 over lightly stemmed words (prefixes count for half), with a bonus
when the whole query appears in the label. When a local sentence-embedding model is available,
its cosine similarity is blended in. A query that is a number (`123`, `#123`) finds that feature;
features without a label are called "feature N" and are reachable by index.
"""

from __future__ import annotations

import bisect
import gzip
import heapq
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LABEL_KEYS = ("label", "description", "explanation")
LABEL_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_STOPWORD_TEXT = (
    "a an and are as at be by for from in into is it its of on or that the this to with "
    "about related relating concept concepts mentions mention references reference"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
INDEX_QUERY = re.compile(r"^\s*(?:#|feature\s*#?\s*)?(\d+)\s*$", re.IGNORECASE)
WORD = re.compile(r"[a-z0-9]+")
BM25_K1 = 1.2
BM25_B = 0.75
PREFIX_CREDIT = 0.5
PHRASE_BONUS = 0.5
SEMANTIC_WEIGHT = 0.7
# Used when sentence-transformers and this model are already on the machine (never downloaded).
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into unit-length vectors (rows); sentence-transformers models fit."""

    def encode(self, texts: list[str], normalize_embeddings: bool) -> Any: ...


class LabelIndex:
    """The labels of one SAE's features, searchable."""

    def __init__(
        self, labels: dict[int, str], d_sae: int, embedder: Embedder | None = None
    ) -> None:
        for index in labels:
            _check_index(index, d_sae)
        self.d_sae = d_sae
        self._labels = {index: text for index, text in labels.items() if text.strip()}
        self._lexical = _Bm25(self._labels)
        self._semantic = _SemanticIndex(embedder, self._labels) if embedder else None

    @classmethod
    def from_mapping(cls, labels: dict[int, str], d_sae: int) -> LabelIndex:
        return cls(labels, d_sae)

    @classmethod
    def load(
        cls, path: str | Path | None, d_sae: int, *, embedding_model: str | None = None
    ) -> LabelIndex:
        """Labels from `path` (None: index-only labels). `embedding_model` names a
        sentence-transformers model to use if it is installed locally (never downloaded)."""
        labels = read_label_file(Path(path), d_sae) if path is not None else {}
        embedder = local_embedder(embedding_model) if embedding_model else None
        return cls(labels, d_sae, embedder)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def semantic(self) -> bool:
        """Whether search embeds the query (milliseconds of model time: keep it off the event
        loop); lexical search alone takes well under a millisecond."""
        return self._semantic is not None

    def label(self, index: int) -> str:
        _check_index(index, self.d_sae)
        return self._labels.get(index) or f"feature {index}"

    def search(self, query: str, top_k: int) -> list[tuple[int, float]]:
        """The `top_k` features whose labels best match `query`, as (index, relevance 0..1)."""
        if (index := self._index_query(query)) is not None:
            return [(index, 1.0)]
        scores = self._scores(query)
        best = heapq.nsmallest(top_k, scores.items(), key=lambda item: (-item[1], item[0]))
        return [(index, score) for index, score in best if score > 0]

    def rerank(self, query: str, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]:
        """`indices` ordered by relevance to `query` (ties keep their given order), first top_k."""
        for index in indices:
            _check_index(index, self.d_sae)
        scores = self._scores(query)
        if (exact := self._index_query(query)) is not None:
            scores[exact] = 1.0
        unique = list(dict.fromkeys(indices))
        ranked = sorted(unique, key=lambda index: -scores.get(index, 0.0))
        return [(index, scores.get(index, 0.0)) for index in ranked[:top_k]]

    def _index_query(self, query: str) -> int | None:
        match = INDEX_QUERY.match(query)
        if match is None or int(match.group(1)) >= self.d_sae:
            return None
        return int(match.group(1))

    def _scores(self, query: str) -> dict[int, float]:
        """Relevance of every label that matches `query` at all."""
        lexical = self._lexical.scores(query)
        if self._semantic is None:
            return lexical
        return {
            index: SEMANTIC_WEIGHT * similarity + (1 - SEMANTIC_WEIGHT) * lexical.get(index, 0.0)
            for index, similarity in self._semantic.scores(query).items()
        }


def _check_index(index: int, d_sae: int) -> None:
    if not 0 <= index < d_sae:
        raise ValueError(f"Feature index {index} is outside this SAE (features 0-{d_sae - 1}).")


# ---- lexical ranking ---------------------------------------------------------------------------


def stem(word: str) -> str:
    """A light English stemmer: enough that 'cats'/'cat', 'pirates'/'pirate',
    'writing'/'write' and 'happiness'/'happy' meet."""
    if word.endswith("iness") and len(word) > 6:
        return word[:-5] + "y"
    if word.endswith("ness") and len(word) > 6:
        return word[:-4]
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "zes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        word = word[:-1]
    for suffix in ("ing", "edly", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) >= 5 else word


def terms(text: str) -> list[str]:
    """Stemmed content words of `text`."""
    words = WORD.findall(text.lower())
    kept = [word for word in words if word not in STOPWORDS] or words
    return [stem(word) for word in kept]


@dataclass(frozen=True)
class _Document:
    terms: Counter[str]
    length: int
    phrase: str


class _Bm25:
    """Okapi BM25 over label terms, normalised so a perfect match scores 1."""

    def __init__(self, labels: dict[int, str]) -> None:
        self._documents = {
            index: _Document(Counter(words), len(words), " ".join(words))
            for index, text in labels.items()
            if (words := terms(text))
        }
        self._postings: dict[str, list[int]] = {}
        for index, document in self._documents.items():
            for term in document.terms:
                self._postings.setdefault(term, []).append(index)
        lengths = [document.length for document in self._documents.values()]
        self._average_length = sum(lengths) / len(lengths) if lengths else 1.0
        self._vocabulary = sorted(self._postings)
        self._best_saturation = self._saturation_of(1, 1)

    def scores(self, query: str) -> dict[int, float]:
        query_terms = list(dict.fromkeys(terms(query)))
        if not query_terms or not self._documents:
            return {}
        totals: defaultdict[int, float] = defaultdict(float)
        perfect = 0.0  # every query term matched in a one-word label
        for term in query_terms:
            idf = self._idf(term)
            perfect += idf * self._best_saturation
            for matched, credit in self._matches(term):
                for index in self._postings[matched]:
                    totals[index] += credit * idf * self._saturation(index, matched)
        if len(query_terms) > 1:
            phrase = " ".join(query_terms)
            for index in totals:
                if phrase in self._documents[index].phrase:
                    totals[index] += PHRASE_BONUS * perfect
            perfect *= 1 + PHRASE_BONUS
        return {index: min(1.0, total / perfect) for index, total in totals.items()}

    def _matches(self, term: str) -> Iterator[tuple[str, float]]:
        """Label terms matching query `term`: itself in full; for half credit, longer words it
        starts and shorter words (3+ letters) that start it."""
        if term in self._postings:
            yield term, 1.0
        if len(term) < 3:
            return
        for end in range(3, len(term)):
            if term[:end] in self._postings:
                yield term[:end], PREFIX_CREDIT
        position = bisect.bisect_right(self._vocabulary, term)
        while position < len(self._vocabulary) and self._vocabulary[position].startswith(term):
            yield self._vocabulary[position], PREFIX_CREDIT
            position += 1

    def _idf(self, term: str) -> float:
        count = len(self._postings.get(term, ()))
        total = len(self._documents)
        return math.log(1 + (total - count + 0.5) / (count + 0.5))

    def _saturation(self, index: int, term: str) -> float:
        document = self._documents[index]
        return self._saturation_of(document.terms[term], document.length)

    def _saturation_of(self, frequency: int, length: int) -> float:
        norm = 1 - BM25_B + BM25_B * length / self._average_length
        return frequency * (BM25_K1 + 1) / (frequency + BM25_K1 * norm)


# ---- semantic ranking --------------------------------------------------------------------------


class _SemanticIndex:
    """Cosine similarity between the query and each label under a sentence-embedding model.
    Every label is embedded up front (minutes for 65k labels on a CPU, so at load time)."""

    def __init__(self, embedder: Embedder, labels: dict[int, str]) -> None:
        self._embedder = embedder
        self._indices = list(labels)
        texts = [labels[index] for index in self._indices]
        self._vectors = embedder.encode(texts, normalize_embeddings=True) if texts else None

    def scores(self, query: str) -> dict[int, float]:
        if self._vectors is None:
            return {}
        query_vector = self._embedder.encode([query], normalize_embeddings=True)[0]
        similarities = (self._vectors @ query_vector).tolist()
        return {
            index: max(0.0, float(similarity))
            for index, similarity in zip(self._indices, similarities, strict=True)
        }


def local_embedder(model_name: str) -> Embedder | None:
    """`model_name` as a sentence-transformers model if the package and the model are on this
    machine already; None otherwise (search falls back to lexical ranking)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    try:
        return SentenceTransformer(model_name, local_files_only=True)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


# ---- label files -------------------------------------------------------------------------------


def read_label_file(path: Path, d_sae: int) -> dict[int, str]:
    """Labels from a JSONL / Neuronpedia export / JSON mapping file, or a directory of them."""
    if path.is_dir():
        files = sorted(file for file in path.iterdir() if file.name.endswith(LABEL_SUFFIXES))
        if not files:
            raise ValueError(f"No label files (.json, .jsonl, optionally .gz) in {path}.")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"Label file not found: {path}")
    labels: dict[int, str] = {}
    for file in files:
        for where, record in _records(file):
            index, text = _parse_record(record, where)
            _check_record_index(index, d_sae, where)
            if text:
                labels.setdefault(index, text)  # the first explanation of a feature wins
    return labels


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
