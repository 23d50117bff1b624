"""Feature search as hosted Ember does it: every feature ranked, the best `top_k` returned.

Each feature's relevance is a weighted sum of what is known about it (all in 0..1):
- semantic: cosine similarity of its label to the query under the sentence-embedding model;
- lexical: BM25 of the query's words in its label (exact words, word forms, the whole phrase);
- activation: how much more it fires on the query's words than on neutral text;
- trigrams: character-trigram similarity, a weak signal that orders what nothing else tells
  apart, so that a search always fills `top_k` (fewer only when the SAE has fewer features).
Without an embedding model the semantic weight goes to the lexical and activation signals.
Unlabelled features ("feature N") rank after labelled ones at equal relevance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.model.labels import LabelIndex, check_index
from server.model.search.activation import ActivationSearch
from server.model.search.lexical import Trigrams

UNLABELLED_PENALTY = 1e-6  # ranks unlabelled features after labelled ones of equal relevance


@dataclass(frozen=True)
class Weights:
    semantic: float
    lexical: float
    activation: float
    trigrams: float


SEMANTIC_WEIGHTS = Weights(semantic=0.55, lexical=0.25, activation=0.15, trigrams=0.05)
LEXICAL_WEIGHTS = Weights(semantic=0.0, lexical=0.6, activation=0.35, trigrams=0.05)


class FeatureSearch:
    """Search and rerank over `labels` (and their embeddings, when loaded with them), with
    activation search blended in when `activation` is given."""

    def __init__(self, labels: LabelIndex, activation: ActivationSearch | None = None) -> None:
        self.labels = labels
        self._activation = activation
        self._embeddings = labels.embeddings
        self._trigrams = Trigrams(labels.texts)
        self._unlabelled = np.ones(labels.d_sae, dtype=bool)
        self._unlabelled[self._trigrams.indices] = False
        self.weights = _available(
            SEMANTIC_WEIGHTS if self._embeddings is not None else LEXICAL_WEIGHTS,
            activation=activation is not None,
        )

    @property
    def mode(self) -> str:
        """What search ranks by, for /health, `ember-bot doctor` and the start-up line."""
        parts = []
        if self._embeddings is not None:
            parts.append(f"semantic ({self._embeddings.embedder.name})")
        parts.append("lexical")
        if self._activation is not None:
            parts.append("activation")
        return " + ".join(parts)

    async def search(self, query: str, top_k: int) -> list[tuple[int, float]]:
        """The `top_k` most relevant features (every one when the SAE has fewer), as
        (index, relevance 0..1), most relevant first; ties go to the lower index."""
        relevance = await self._relevance(query)
        order = relevance - UNLABELLED_PENALTY * self._unlabelled
        if (exact := self.labels.index_query(query)) is not None:
            relevance[exact] = order[exact] = 1.0 + 1.0  # first, whatever the rest says
        top = _top(order, min(top_k, self.labels.d_sae))
        return [(index, min(1.0, float(relevance[index]))) for index in top]

    async def rerank(
        self, query: str, indices: Sequence[int], top_k: int
    ) -> list[tuple[int, float]]:
        """`indices` by relevance to `query` (ties keep their given order), the first `top_k`."""
        for index in indices:
            check_index(index, self.labels.d_sae)
        unique = list(dict.fromkeys(indices))
        relevance = await self._relevance(query, unique)
        if (exact := self.labels.index_query(query)) is not None:
            relevance[exact] = 1.0 + 1.0
        ranked = sorted(unique, key=lambda index: -relevance[index])
        return [(index, min(1.0, float(relevance[index]))) for index in ranked[:top_k]]

    async def _relevance(self, query: str, among: Sequence[int] | None = None) -> np.ndarray:
        """Every feature's relevance to `query` (float64, d_sae long). Activation is read only
        for `among` when given."""
        weights = self.weights
        relevance = np.zeros(self.labels.d_sae)
        labelled = self._trigrams.indices
        relevance[labelled] += weights.trigrams * self._trigrams.scores(query)
        relevance += weights.lexical * self.labels.lexical_relevance(query)
        if self._embeddings is not None and query.strip():
            similarities = await asyncio.to_thread(self._embeddings.similarities, query)
            relevance[self._embeddings.indices] += weights.semantic * similarities.clip(min=0)
        if self._activation is not None:
            for index, score in (await self._activation.scores(query, among)).items():
                relevance[index] += weights.activation * score
        return relevance


def _available(weights: Weights, *, activation: bool) -> Weights:
    """`weights` without the activation signal when there is none, rescaled to sum to 1."""
    if activation:
        return weights
    total = weights.semantic + weights.lexical + weights.trigrams
    return Weights(weights.semantic / total, weights.lexical / total, 0.0, weights.trigrams / total)


def _top(order: np.ndarray, count: int) -> list[int]:
    """Indices of the `count` largest values of `order`, largest first, ties to lower indices."""
    if count <= 0:
        return []
    threshold = np.partition(order, len(order) - count)[len(order) - count]
    pool = np.flatnonzero(order >= threshold)
    ranked = pool[np.lexsort((pool, -order[pool]))]
    return [int(index) for index in ranked[:count]]
