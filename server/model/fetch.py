"""Everything a served model needs from the network, fetched ahead of time (`ember-bot fetch`)
or on first use (`ember-bot serve`): the model and SAE into the Hugging Face cache, the labels
into the labels cache (server/model/neuronpedia.py), and feature search's sentence-embedding
model (server/model/search/embeddings.py). Afterwards `HF_HUB_OFFLINE=1` serving needs no
network.

This module imports neither torch nor transformers, so fetching starts at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from server.model import hub, neuronpedia
from server.model.catalog import CATALOG
from server.model.labels import DEFAULT_EMBEDDING_MODEL
from server.model.saelens_releases import looks_like_release, resolve

TINY = "tiny"
# The embedding model's config, weights, tokenizer and pooling config (not onnx/openvino copies).
EMBEDDING_FILES = ("*.json", "model.safetensors", "vocab.txt", "tokenizer*", "1_Pooling/*")
EMBEDDING_IGNORE = ("onnx/*", "openvino/*")


@dataclass(frozen=True)
class Sources:
    """What to fetch for one served model. `model`/`sae` that are local paths need nothing."""

    model: str | None  # Hugging Face model id or local folder; None: built in (tiny)
    sae: str | None  # `hf:` spec or local path
    labels: str | None = None  # local file or folder, or http(s) URL of an explanations/ folder
    neuronpedia: tuple[str, str] | None = None  # (model id, source id) when `labels` is None
    command: str = hub.FETCH_COMMAND  # how the user fills the cache for these (offline hint)


@dataclass(frozen=True)
class Fetched:
    model: Path | None
    sae: Path | None
    labels: Path | None  # what to load labels from (None: index-only labels)
    embedding: Path | None


def sources_for(
    preset: str | None, model: str | None, sae: str | None, labels: str | None
) -> Sources:
    """The sources of serve's or fetch's options: `--model/--sae`, else the preset (tiny)."""
    if sae is not None:
        sources = model_sources(model, sae, labels)
    else:
        sources = preset_sources(preset or TINY, labels)
    if labels is not None and neuronpedia.is_url(labels):
        return replace(sources, command=f"{sources.command} --labels {labels}")
    return sources


def preset_sources(name: str, labels: str | None = None) -> Sources:
    """The sources of catalogue preset `name` (`tiny`: nothing to fetch)."""
    if name == TINY:
        return Sources(None, None, labels, command=f"{hub.FETCH_COMMAND} {TINY}")
    if name not in CATALOG:
        choices = ", ".join([TINY, *CATALOG])
        raise ValueError(f"Unknown preset {name!r}; choose one of: {choices}.")
    entry = CATALOG[name]
    source = entry.source()
    return Sources(
        entry.model, source.spec, labels, entry.neuronpedia, f"{hub.FETCH_COMMAND} {name}"
    )


def model_sources(model: str | None, sae: str, labels: str | None = None) -> Sources:
    """The sources of `--model M --sae S`; a SAELens release/id names its model and labels."""
    command = f"{hub.FETCH_COMMAND} {f'--model {model} ' if model else ''}--sae {sae}"
    if looks_like_release(sae):
        source = resolve(sae)
        return Sources(model or source.model, source.spec, labels, source.neuronpedia, command)
    return Sources(model, sae, labels, None, command)


def fetch(
    sources: Sources,
    *,
    labels_url: str | None = None,
    embedding_model: str | None = DEFAULT_EMBEDDING_MODEL,
    say: Callable[[str], None] | None = None,
) -> Fetched:
    """Download what `sources` name and the cache lacks (nothing when HF_HUB_OFFLINE=1: then a
    missing piece is a ValueError naming `sources.command`). `say` reports each piece."""
    report = say or _say
    offline = hub.offline()
    model = _fetch_model(sources, report)
    sae = None
    if sources.sae is not None and sources.sae.startswith(hub.PREFIX):
        sae = hub.download(sources.sae, command=sources.command)
        report(f"SAE     {sources.sae.removeprefix(hub.PREFIX)}: {sae}")
    labels = _fetch_labels(sources, labels_url, offline, report)
    embedding = _fetch_embedding(embedding_model, sources, report) if sources.model else None
    return Fetched(model, sae, labels, embedding)


def _fetch_model(sources: Sources, report: Callable[[str], None]) -> Path | None:
    if sources.model is None or Path(sources.model).expanduser().exists():
        return None
    path = hub.download_repo(sources.model, command=sources.command)
    report(f"model   {sources.model}: {path}")
    return path


def _fetch_labels(
    sources: Sources, labels_url: str | None, offline: bool, report: Callable[[str], None]
) -> Path | None:
    command = sources.command
    if sources.labels is not None and neuronpedia.is_url(sources.labels):
        path = neuronpedia.fetch_labels_folder(sources.labels, offline=offline, command=command)
    elif sources.labels is not None:
        return Path(sources.labels)
    elif sources.neuronpedia is not None:
        np_model, np_source = sources.neuronpedia
        path = neuronpedia.fetch_labels(
            np_model, np_source, base_url=labels_url, offline=offline, command=command
        )
    else:
        if sources.model is not None:
            report("labels  none published for this SAE: features by index (or pass --labels)")
        return None
    batches = len(list(path.glob("batch-*.jsonl.gz")))
    report(f"labels  {path} ({batches} batch{'es' if batches != 1 else ''})")
    return path


def _fetch_embedding(
    name: str | None, sources: Sources, report: Callable[[str], None]
) -> Path | None:
    if name is None:
        return None
    try:
        path = hub.download_repo(
            name, EMBEDDING_FILES, ignore=EMBEDDING_IGNORE, command=sources.command
        )
    except ValueError as error:  # optional: search falls back to lexical ranking
        report(f"search  {name}: not available, search stays lexical ({error})")
        return None
    report(f"search  {name}: {path}")
    return path


def _say(line: str) -> None:
    print(line, flush=True)  # stdout: progress bars and errors go to stderr
