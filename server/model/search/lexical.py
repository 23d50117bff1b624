"""Lexical ranking of labels: BM25 over lightly stemmed words, and character trigrams.

BM25 rewards the query's exact words (prefixes count for half, the whole phrase earns a bonus);
it scores only labels that share a word with the query. Trigram overlap is a weak, always
defined similarity (TF-IDF weighted trigrams shared with the query) that orders what nothing
else tells apart, so that a search can always fill `top_k`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_STOPWORD_TEXT = (
    "a an and are as at be by for from in into is it its of on or that the this to with "
    "about related relating concept concepts mentions mention references reference"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
WORD = re.compile(r"[a-z0-9]+")
BM25_K1 = 1.2
BM25_B = 0.75
PREFIX_CREDIT = 0.5
PHRASE_BONUS = 0.5


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


class Bm25:
    """Okapi BM25 over label terms, normalised so a perfect match scores 1. Each term's
    postings (feature indices) and their saturations are arrays, so that a common word costs
    one vectorised add, not a loop over thousands of labels."""

    def __init__(self, labels: dict[int, str]) -> None:
        self._documents = {
            index: _Document(Counter(words), len(words), " ".join(words))
            for index, text in labels.items()
            if (words := terms(text))
        }
        lengths = [document.length for document in self._documents.values()]
        self._average_length = sum(lengths) / len(lengths) if lengths else 1.0
        self._size = max(self._documents, default=-1) + 1
        postings: dict[str, list[int]] = {}
        saturations: dict[str, list[float]] = {}
        for index, document in self._documents.items():
            for term, count in document.terms.items():
                postings.setdefault(term, []).append(index)
                saturations.setdefault(term, []).append(self._saturation_of(count, document.length))
        self._postings = {term: np.asarray(rows, dtype=np.int64) for term, rows in postings.items()}
        self._saturations = {term: np.asarray(values) for term, values in saturations.items()}
        self._vocabulary = sorted(self._postings)
        self._best_saturation = self._saturation_of(1, 1)

    def scores(self, query: str) -> dict[int, float]:
        """Relevance (0..1] of each label that shares a word with `query`."""
        relevance = self.relevance(query, self._size)
        return {int(index): float(relevance[index]) for index in np.flatnonzero(relevance)}

    def relevance(self, query: str, size: int) -> np.ndarray:
        """Relevance (0..1) of every feature index below `size` (0 where no word is shared)."""
        totals = np.zeros(size)
        query_terms = list(dict.fromkeys(terms(query)))
        if not query_terms or not self._documents:
            return totals
        perfect = 0.0  # every query term matched in a one-word label
        for term in query_terms:
            idf = self._idf(term)
            perfect += idf * self._best_saturation
            for matched, credit in self._matches(term):
                totals[self._postings[matched]] += credit * idf * self._saturations[matched]
        if len(query_terms) > 1:
            phrase = " ".join(query_terms)
            for index in np.flatnonzero(totals):
                if phrase in self._documents[int(index)].phrase:
                    totals[index] += PHRASE_BONUS * perfect
            perfect *= 1 + PHRASE_BONUS
        return np.minimum(totals / perfect, 1.0)

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

    def _saturation_of(self, frequency: int, length: int) -> float:
        norm = 1 - BM25_B + BM25_B * length / self._average_length
        return frequency * (BM25_K1 + 1) / (frequency + BM25_K1 * norm)


class Trigrams:
    """Cosine similarity of TF-IDF weighted character trigrams (of words padded with spaces)
    between the query and each label: `scores` returns a dense array over `indices`."""

    def __init__(self, labels: dict[int, str]) -> None:
        self.indices = np.fromiter(labels, dtype=np.int64, count=len(labels))
        postings: defaultdict[str, list[int]] = defaultdict(list)
        for row, text in enumerate(labels.values()):
            for gram in set(trigrams(text)):
                postings[gram].append(row)
        count = max(len(labels), 1)
        self._idf = {gram: math.log(1 + count / len(rows)) for gram, rows in postings.items()}
        self._postings = {gram: np.asarray(rows, dtype=np.int64) for gram, rows in postings.items()}
        norms = np.zeros(len(labels))
        for gram, rows in self._postings.items():
            norms[rows] += self._idf[gram] ** 2
        self._norms = np.sqrt(norms).clip(min=1e-9)

    def scores(self, query: str) -> np.ndarray:
        totals = np.zeros(len(self.indices))
        grams = set(trigrams(query))
        query_norm = math.sqrt(sum(self._idf.get(gram, 0.0) ** 2 for gram in grams)) or 1.0
        for gram in grams:
            if (rows := self._postings.get(gram)) is not None:
                totals[rows] += self._idf[gram] ** 2
        return totals / (self._norms * query_norm)


def trigrams(text: str) -> list[str]:
    """Character trigrams of each word of `text`, padded (' ca', 'cat', 'at ')."""
    return [
        padded[start : start + 3]
        for word in WORD.findall(text.lower())
        for padded in (f" {word} ",)
        for start in range(len(padded) - 2)
    ]
