"""The text corpus to label from: local text/JSONL files (or folders of them), or a Hugging Face
dataset streamed with the `datasets` package, cut into fixed windows of tokens.

A `.txt` file holds documents separated by blank lines; a `.jsonl` file one JSON object per line
with a `text` field. Each document is tokenized on its own and cut into windows of `context`
tokens (the last one may be shorter), so a window never spans two documents. The order is fixed,
so window N is the same window in every run over the same corpus (what --resume relies on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = (".txt", ".jsonl")
HF_PREFIX = "hf:"


class CorpusError(ValueError):
    """The corpus cannot be read (one line, for the CLI)."""


@dataclass(frozen=True)
class Corpus:
    """Where the text comes from: local files, or a Hugging Face dataset id (and split)."""

    files: tuple[Path, ...]
    dataset: str | None = None
    split: str = "train"

    @classmethod
    def open(cls, spec: str) -> Corpus:
        """`spec`: a file, a folder of .txt/.jsonl files, or `hf:<dataset id>[:<split>]`."""
        if spec.startswith(HF_PREFIX):
            name, _, split = spec.removeprefix(HF_PREFIX).partition(":")
            if not name:
                raise CorpusError(
                    f"Corpus {spec!r}: name a dataset, e.g. hf:roneneldan/TinyStories"
                )
            return cls((), name, split or "train")
        path = Path(spec)
        if path.is_dir():
            files = tuple(sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES))
            if not files:
                raise CorpusError(f"Corpus folder {path} holds no .txt or .jsonl files.")
            return cls(files)
        if path.is_file():
            return cls((path,))
        raise CorpusError(
            f"Corpus not found: {spec} (give a .txt/.jsonl file, a folder of them, or "
            "hf:<dataset id>)."
        )

    @property
    def size_bytes(self) -> int | None:
        """Bytes of text to read (None for a streamed dataset): the progress bar's total."""
        return None if self.dataset else sum(path.stat().st_size for path in self.files)

    def describe(self) -> str:
        """What the checkpoint's fingerprint records about the corpus."""
        if self.dataset:
            return f"{HF_PREFIX}{self.dataset}:{self.split}"
        return ";".join(f"{path.resolve()}:{path.stat().st_size}" for path in self.files)

    def documents(self) -> Iterator[tuple[str, int]]:
        """Each document's text and the bytes it took in its file."""
        if self.dataset:
            yield from _dataset_documents(self.dataset, self.split)
            return
        for path in self.files:
            yield from _file_documents(path)


def _file_documents(path: Path) -> Iterator[tuple[str, int]]:
    try:
        with path.open(encoding="utf-8") as stream:
            if path.suffix == ".jsonl":
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield _jsonl_text(line, path, number), len(line.encode())
                return
            paragraph: list[str] = []
            size = 0
            for line in stream:
                size += len(line.encode())
                if line.strip():
                    paragraph.append(line)
                elif paragraph:
                    yield "".join(paragraph).strip(), size
                    paragraph, size = [], 0
            if paragraph:
                yield "".join(paragraph).strip(), size
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"Cannot read corpus file {path}: {error}") from error


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path} line {number}: not valid JSON ({error.msg}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise CorpusError(f"{path} line {number}: expected an object with a 'text' string.")
    return str(record["text"])


def _dataset_documents(name: str, split: str) -> Iterator[tuple[str, int]]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            "A Hugging Face dataset corpus needs the datasets package: pip install datasets "
            "(or give a local .txt/.jsonl corpus)."
        ) from None
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
        for record in stream:
            text = record.get("text") if isinstance(record, dict) else None
            if isinstance(text, str):
                yield text, len(text.encode())
    except Exception as error:  # the hub's and datasets' errors share no base class
        raise CorpusError(f"Cannot stream dataset {name!r} ({split}): {error}") from error


def windows(
    corpus: Corpus, tokenizer: Any, context: int, skip: int = 0
) -> Iterator[tuple[list[int], int]]:
    """Token windows of at most `context` tokens, in corpus order, after the first `skip`
    (tokenized but not yielded: resuming), each with the bytes read since the previous one."""
    seen = 0
    for text, size in corpus.documents():
        ids: list[int] = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids), context):
            if seen >= skip:
                yield ids[start : start + context], size
            size = 0
            seen += 1
