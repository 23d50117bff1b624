"""What the vLLM engine serves, loaded without the model's weights: vLLM reads those itself.

The bundle keeps the API's view of the model (tokenizer and chat template, config, generation
config, SAE, labels, ids); its `model` is a skeleton on the meta device that holds no memory.
The `tiny` preset is built in memory as usual and written to a folder for vLLM to load.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from server.model.loading import (
    _sae_name,
    chat_tokenizer,
    freeze,
    resolve_dtype,
    sae_for_model,
    served_labels,
)
from server.model.presets import PRESETS, ModelBundle, load_preset
from server.model.tiny.build import MODEL_ID as TINY_MODEL_ID


def load_bundle_without_weights(
    model: str,
    sae: str,
    layer: int | None,
    labels: str | None,
    *,
    dtype: str = "auto",
    embedding: Path | None = None,
    **_placement: Any,
) -> ModelBundle:
    """load_bundle's bundle (same arguments; placement options are vLLM's business) with a
    weightless model. The SAE goes to the first GPU if there is one (vLLM's memory budget
    leaves room for it, see options.py), else the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = resolve_dtype(dtype, device)
    autoencoder, hooked, config = sae_for_model(model, sae, layer, torch_dtype)
    tokenizer = chat_tokenizer(model)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    with contextlib.suppress(OSError):  # the model's own end-of-sequence tokens, if it has any
        skeleton.generation_config = transformers.GenerationConfig.from_pretrained(model)
    freeze(autoencoder)
    return ModelBundle(
        skeleton,
        tokenizer,
        autoencoder.to(device),
        hooked,
        served_labels(labels, autoencoder.d_sae, embedding=embedding, device=device),
        model_id=model,
        sae_id=_sae_name(sae),
    )


def load_preset_without_weights(
    name: str, *, labels: str | None = None, **options: Any
) -> ModelBundle:
    """load_preset's bundle for the vLLM engine (tiny: built in memory, weights and all)."""
    if name not in PRESETS or name == "tiny":
        return load_preset(name, labels=labels)
    preset = PRESETS[name]
    return load_bundle_without_weights(preset.model, preset.sae, preset.layer, labels, **options)


def model_source(bundle: ModelBundle) -> str:
    """What vLLM loads: the hub id or local path, or for `tiny` a folder it is written to."""
    if bundle.model_id != TINY_MODEL_ID:
        return bundle.model_id
    folder = Path(tempfile.mkdtemp(prefix="ember-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    write_model(bundle, folder)
    return str(folder)


def write_model(bundle: ModelBundle, folder: Path) -> None:
    """The bundle's model and tokenizer as a Hugging Face checkpoint folder."""
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
