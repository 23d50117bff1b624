"""Label embeddings, computed once per label set and embedding model, then read from disk.

The cache (`EMBER_SEARCH_CACHE`, by default ~/.cache/ember-bot/search) holds one `.npz` per
(embedding model, revision, label set): the labelled feature indices and their unit vectors in
float16 (half the disk; cosine ranking does not notice). The label set is keyed by a digest of
its (index, text) pairs, which is the label file's content whatever its format or compression.
A 65k-label SAE whose embeddings are cached starts in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.model.search.embeddings import Embedder

SEARCH_CACHE_ENV = "EMBER_SEARCH_CACHE"


@dataclass(frozen=True)
class LabelEmbeddings:
    """Unit vectors of the labelled features `indices` under `embedder`."""

    embedder: Embedder
    indices: np.ndarray  # int64 feature indices, one per row of `vectors`
    vectors: np.ndarray  # float32 [labels, width], unit rows
    from_cache: bool  # read from disk rather than computed at this start

    @classmethod
    def build(
        cls,
        embedder: Embedder,
        labels: dict[int, str],
        *,
        cache: Path | None = None,
        say: Callable[[str], None] | None = None,
    ) -> LabelEmbeddings:
        """Read from the cache when it holds this label set for this model; else embed every
        label (minutes for 65k labels on a CPU) and write the cache for next time."""
        path = cache_file(embedder, labels, cache)
        indices = np.fromiter(labels, dtype=np.int64, count=len(labels))
        if path.is_file():
            with np.load(path) as stored:
                if np.array_equal(stored["indices"], indices):
                    return cls(embedder, indices, stored["vectors"].astype(np.float32), True)
        if say is not None:
            say(f"search: embedding {len(labels):,} labels with {embedder.name} (first start only)")
        vectors = embedder.embed(list(labels.values())).astype(np.float32)
        _write(path, indices, vectors)
        return cls(embedder, indices, vectors, False)

    def similarities(self, query: str) -> np.ndarray:
        """Cosine similarity of `query` to each label, in `indices` order."""
        query_vector = self.embedder.embed([query])[0]
        return self.vectors @ query_vector


def cache_root() -> Path:
    """$EMBER_SEARCH_CACHE, else ~/.cache/ember-bot/search (under $XDG_CACHE_HOME if set)."""
    if configured := os.environ.get(SEARCH_CACHE_ENV):
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ember-bot" / "search"


def cache_file(embedder: Embedder, labels: dict[int, str], root: Path | None = None) -> Path:
    """Where the embeddings of `labels` under `embedder` are kept."""
    digest = hashlib.sha256()
    for index, text in labels.items():
        digest.update(f"{index}\t{text}\n".encode())
    model = re.sub(r"[^A-Za-z0-9._-]+", "--", embedder.name)
    revision = re.sub(r"[^A-Za-z0-9._-]+", "-", embedder.revision)[:40]
    return (root or cache_root()) / model / f"{revision}-{digest.hexdigest()[:24]}.npz"


def _write(path: Path, indices: np.ndarray, vectors: np.ndarray) -> None:
    """Written whole or not at all: a temporary file beside it, then renamed. A cache that
    cannot be written costs the next start its time, nothing else."""
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as file:
            temporary = Path(file.name)
            np.savez(file, indices=indices, vectors=vectors.astype(np.float16))
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
