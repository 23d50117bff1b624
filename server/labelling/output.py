"""The label file and the work folder beside it.

`<out>.work/` holds the collection checkpoint (`collect.pt`) and the labels finished so far
(`labels.jsonl`, one line appended per feature); it goes away once `<out>` is written. `<out>`
itself is written whole or not at all (a temporary file renamed over it), in the JSONL format
server/model/labels.py loads: `{"index", "label", "score", "explainer", "source"}` per line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

SOURCE = "ember-bot label"


class WorkFolder:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.with_name(out.name + ".work")
        self.checkpoint = self.path / "collect.pt"
        self.progress = self.path / "labels.jsonl"

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def finished(self) -> dict[int, dict[str, Any]]:
        """Labels finished by earlier runs, by feature index (a line cut short by a kill is
        skipped: that feature is labelled again)."""
        if not self.progress.exists():
            return {}
        done: dict[int, dict[str, Any]] = {}
        for line in self.progress.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                done[record["index"]] = record
        return done

    def append(self, record: dict[str, Any]) -> None:
        with self.progress.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def label_record(
    index: int, label: str, score: float | None, explainer: str, *, override: bool = False
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "label": label, "score": score}
    record |= {"explainer": explainer, "source": SOURCE}
    if override:
        record["override"] = True  # may replace a published label (see server/labelling/sources)
    return record


def write_labels(out: Path, records: list[dict[str, Any]]) -> None:
    """Write `records` (sorted by index) to `out` atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    lines = [json.dumps(record) + "\n" for record in sorted(records, key=lambda r: r["index"])]
    with temporary.open("w", encoding="utf-8") as stream:
        stream.writelines(lines)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, out)
