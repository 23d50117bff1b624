"""A small pretrained sentence-embedding model (all-MiniLM-L6-v2 by default), run with plain
transformers: AutoTokenizer, AutoModel, then the pooling its `1_Pooling/config.json` names (mean
over tokens, or the CLS token as bge models use) and unit length.

No sentence-transformers: for encoding short labels it adds only this pooling (a dozen lines)
and would pull in scikit-learn, scipy and its own model-loading layer besides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 128
MAX_TOKENS = 128  # labels are a sentence at most; longer text is cut here
POOLING_CONFIG = "1_Pooling/config.json"


class Embedder(Protocol):
    """Turns texts into unit-length float32 rows; `name` and `revision` key the label cache."""

    name: str
    revision: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class SentenceEmbedder:
    name: str
    revision: str
    tokenizer: Any
    model: Any  # a transformers encoder (BERT-style), eval mode
    pooling: str  # "mean" or "cls"

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> SentenceEmbedder:
        """The model in `folder` (a Hugging Face snapshot or any local copy); ValueError with one
        line when it cannot be read."""
        import torch
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot load the embedding model in {folder}: {error}") from error
        model.requires_grad_(False)
        model.eval().to(device)
        name, revision = identify(folder)
        return cls(name, revision, tokenizer, model, _pooling(folder))

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        rows = []
        device = next(self.model.parameters()).device
        # Batches of similar lengths pad little: embed by length, then restore the order.
        order = sorted(range(len(texts)), key=lambda row: len(texts[row]))
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(
                    [texts[row] for row in order[start : start + BATCH_SIZE]],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(device)
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                rows.append(pooled.float().cpu().numpy())
        width = int(self.model.config.hidden_size)
        if not rows:
            return np.zeros((0, width), dtype=np.float32)
        vectors = np.empty((len(texts), width), dtype=np.float32)
        vectors[order] = np.concatenate(rows)
        return vectors


def identify(folder: Path) -> tuple[str, str]:
    """(model id, revision) of a model folder: from the Hugging Face cache layout
    (`models--owner--name/snapshots/<commit>`), else the folder's name and a digest of its
    config and weights' sizes and times."""
    folder = folder.resolve() if not _in_hub_cache(folder) else folder
    if _in_hub_cache(folder):
        repo = folder.parent.parent.name.removeprefix("models--").replace("--", "/")
        return repo, folder.name
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return folder.name, digest.hexdigest()[:16]


def _in_hub_cache(folder: Path) -> bool:
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def _pooling(folder: Path) -> str:
    """What sentence-transformers would pool by (mean when the folder does not say)."""
    path = folder / POOLING_CONFIG
    if not path.is_file():
        return "mean"
    config = json.loads(path.read_text())
    return "cls" if config.get("pooling_mode_cls_token") else "mean"
