"""What the server serves: a model, its tokenizer, an SAE on one layer, and the SAE's labels.

`tiny` is built in memory (see server/model/tiny/build.py). The other presets are the real public
model/SAE pairs of server/model/catalog.py; their files are downloaded from the Hugging Face Hub
on the user's machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from server.labelling.sources import with_label_file
from server.model.catalog import CATALOG
from server.model.loading import (
    AUTO,
    DTYPES,
    ModelBundle,
    freeze,
    load_bundle,
    resolve_device,
    resolve_dtype,
)
from server.model.tiny.build import MODEL_ID as TINY_MODEL_ID
from server.model.tiny.build import SAE_ID as TINY_SAE_ID
from server.model.tiny.build import build_tiny_parts
from server.model.tiny.vocabulary import TINY_PLANTED

__all__ = [  # loading.py's names too, kept importable from here
    "AUTO",
    "DTYPES",
    "PRESETS",
    "TINY_PLANTED",
    "ModelBundle",
    "Preset",
    "build_tiny",
    "load_bundle",
    "load_preset",
    "resolve_device",
    "resolve_dtype",
]


@dataclass(frozen=True)
class Preset:
    name: str
    model: str
    sae: str
    layer: int
    description: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "tiny",
            TINY_MODEL_ID,
            TINY_SAE_ID,
            1,
            "A small random Llama with planted, labelled features; built in memory, no download.",
        ),
        *(
            Preset(e.name, e.model, e.source().spec, e.layer, e.description)
            for e in CATALOG.values()
        ),
    )
}


def build_tiny() -> ModelBundle:
    """The `tiny` preset: deterministic, offline, about a second on a CPU."""
    parts = build_tiny_parts()
    freeze(parts.model)
    return ModelBundle(
        parts.model,
        parts.tokenizer,
        parts.sae,
        parts.layer,
        parts.labels,
        TINY_MODEL_ID,
        TINY_SAE_ID,
    )


def load_preset(
    name: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    labels: str | None = None,
    **loading: Any,
) -> ModelBundle:
    """The preset `name`; `labels`: a label file or folder (fetched ones come from
    server.model.fetch). `loading`: load_bundle's placement options (device_map, quantize,
    check_memory) and search `embedding` model folder; tiny has no embedding model."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    if name == "tiny":  # a label file merges over tiny's own labels (see labelling/sources.py)
        tiny = build_tiny()
        merged = with_label_file(tiny.labels, labels, under=tiny.labels.texts)
        return dataclasses.replace(tiny, labels=merged)
    preset = PRESETS[name]
    return load_bundle(
        preset.model,
        preset.sae,
        preset.layer,
        labels,
        device=device,
        dtype=dtype,
        **loading,
    )
