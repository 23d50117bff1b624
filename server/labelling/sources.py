"""Label files from several sources, merged: published labels (Neuronpedia exports, a preset's
own, any file without an `explainer` field) come before generated ones (`ember-bot label`
output, which names its explainer), unless a generated record says `"override": true`
(`ember-bot label --override-published`). Among equals the first file (by name) wins.

Generated labels carry a detection `score`; the score of the label chosen for a feature is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.model.labels import (
    LABEL_SUFFIXES,
    LabelIndex,
    _check_record_index,
    _parse_record,
    _records,
)

GENERATED, PUBLISHED, OVERRIDING = 0, 1, 2


@dataclass(frozen=True)
class LabelEntry:
    text: str
    score: float | None
    priority: int


def read_label_entries(
    path: Path, d_sae: int, under: dict[int, str] | None = None
) -> dict[int, LabelEntry]:
    """The label of each feature in the file or folder `path`, merged by priority over
    `under` (published labels from elsewhere, e.g. a preset's own)."""
    entries = {index: LabelEntry(text, None, PUBLISHED) for index, text in (under or {}).items()}
    for file in _label_files(path):
        for where, record in _records(file):
            index, text = _parse_record(record, where)
            _check_record_index(index, d_sae, where)
            entry = LabelEntry(text, _score(record), _priority(record))
            if text and entry.priority > entries.get(index, LabelEntry("", None, -1)).priority:
                entries[index] = entry
    return entries


def with_label_file(
    labels: LabelIndex, path: str | Path | None, under: dict[int, str] | None = None
) -> LabelIndex:
    """`labels` with the scores from `path`; with `under`, a new index of `path`'s labels
    merged over those published ones."""
    if path is None:
        return labels
    entries = read_label_entries(Path(path), labels.d_sae, under)
    if under is not None:
        labels = LabelIndex({index: entry.text for index, entry in entries.items()}, labels.d_sae)
    labels.scores = {i: entry.score for i, entry in entries.items() if entry.score is not None}
    return labels


def _label_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(file for file in path.iterdir() if file.name.endswith(LABEL_SUFFIXES))
        if not files:
            raise ValueError(f"No label files (.json, .jsonl, optionally .gz) in {path}.")
        return files
    if path.is_file():
        return [path]
    raise ValueError(f"Label file not found: {path}")


def _priority(record: dict[str, Any]) -> int:
    if "explainer" not in record:
        return PUBLISHED
    return OVERRIDING if record.get("override") is True else GENERATED


def _score(record: dict[str, Any]) -> float | None:
    score = record.get("score")
    return float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
