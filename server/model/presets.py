"""What the server serves: a model, its tokenizer, an SAE on one layer, and the SAE's labels.

`tiny` is built in memory (see server/model/tiny/build.py). The other presets name real public
model/SAE pairs; their files are downloaded from the Hugging Face Hub on the user's machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from server.model.labels import DEFAULT_EMBEDDING_MODEL, LabelIndex
from server.model.sae import SparseAutoencoder, load_sae
from server.model.tiny.build import MODEL_ID as TINY_MODEL_ID
from server.model.tiny.build import SAE_ID as TINY_SAE_ID
from server.model.tiny.build import build_tiny_parts
from server.model.tiny.vocabulary import TINY_PLANTED

__all__ = [
    "PRESETS",
    "TINY_PLANTED",
    "ModelBundle",
    "Preset",
    "build_tiny",
    "load_bundle",
    "load_preset",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO = "auto"
# Neuronpedia publishes each SAE's labels as gzipped JSONL batches under
# {NEURONPEDIA_EXPORTS}/<model id>/<sae id>/explanations/.
NEURONPEDIA_EXPORTS = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/v1"


@dataclass(frozen=True)
class Preset:
    name: str
    model: str
    sae: str
    layer: int
    labels: str | None
    description: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "tiny",
            TINY_MODEL_ID,
            TINY_SAE_ID,
            1,
            None,
            "A small random Llama with planted, labelled features; built in memory, no download.",
        ),
        Preset(
            "gemma-2-2b",
            "google/gemma-2-2b-it",
            "hf:google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz",
            20,
            None,
            "Gemma 2 2B instruct with the Gemma Scope residual SAE on layer 20 (16k features, "
            "JumpReLU; trained on the base model, which Neuronpedia also pairs it with). Labels: "
            f"download {NEURONPEDIA_EXPORTS}/gemma-2-2b/20-gemmascope-res-16k/explanations/ "
            "(batch-*.jsonl.gz) and pass the folder with --labels.",
        ),
        Preset(
            "llama-3.1-8b",
            "meta-llama/Llama-3.1-8B-Instruct",
            "hf:Goodfire/Llama-3.1-8B-Instruct-SAE-l19/Llama-3.1-8B-Instruct-SAE-l19.pth",
            19,
            None,
            "Llama 3.1 8B Instruct with Goodfire's SAE on layer 19 (65,536 features). No labels "
            "were released: features are found by index (or pass --labels).",
        ),
        Preset(
            "llama-3.3-70b",
            "meta-llama/Llama-3.3-70B-Instruct",
            "hf:Goodfire/Llama-3.3-70B-Instruct-SAE-l50/Llama-3.3-70B-Instruct-SAE-l50.pt",
            50,
            None,
            "Llama 3.3 70B Instruct with Goodfire's SAE on layer 50 (65,536 features). Labels: "
            f"download {NEURONPEDIA_EXPORTS}/llama3.3-70b-it/50-resid-post-gf/explanations/ "
            "and pass the folder with --labels.",
        ),
    )
}


@dataclass
class ModelBundle:
    model: transformers.PreTrainedModel  # eval mode
    tokenizer: transformers.PreTrainedTokenizerBase  # has a chat template
    sae: SparseAutoencoder
    layer: int  # index into model.model.layers whose output is the hooked residual stream
    labels: LabelIndex
    model_id: str  # the served model name
    sae_id: str


def build_tiny() -> ModelBundle:
    """The `tiny` preset: deterministic, offline, about a second on a CPU."""
    parts = build_tiny_parts()
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
    name: str, *, device: str = "cpu", dtype: str = "float32", labels: str | None = None
) -> ModelBundle:
    """The preset `name`; `labels` overrides the preset's label file."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    if name == "tiny":
        return build_tiny()
    preset = PRESETS[name]
    return load_bundle(
        preset.model, preset.sae, preset.layer, labels or preset.labels, device=device, dtype=dtype
    )


def load_bundle(
    model: str,
    sae: str,
    layer: int | None,
    labels: str | None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> ModelBundle:
    """A Hugging Face causal LM (hub id or local path) with `sae` hooked after decoder `layer`
    (None: the layer the SAE's own metadata names). `device`/`dtype` may be "auto"."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    autoencoder = load_sae(sae, device=device, dtype=torch_dtype)
    hooked = layer if layer is not None else autoencoder.hook_layer
    if hooked is None:
        raise ValueError(f"The SAE {sae!r} does not say which layer it reads; pass --layer.")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    if not tokenizer.chat_template:
        raise ValueError(f"The model {model!r} has no chat template; use an instruct model.")
    network = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    network.to(device).eval()  # type: ignore[arg-type]  # transformers mistypes .to()
    _check_fit(network, autoencoder, hooked, model)
    return ModelBundle(
        network,
        tokenizer,
        autoencoder,
        hooked,
        LabelIndex.load(labels, autoencoder.d_sae, embedding_model=DEFAULT_EMBEDDING_MODEL),
        model_id=model,
        sae_id=_sae_name(sae),
    )


def resolve_device(name: str) -> str:
    """`auto`: the first CUDA GPU if there is one, else the CPU."""
    if name != AUTO:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto`: bfloat16 on a GPU, float32 on the CPU."""
    if name == AUTO:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose one of: {AUTO}, {', '.join(DTYPES)}.")
    return DTYPES[name]


def _check_fit(
    model: transformers.PreTrainedModel, sae: SparseAutoencoder, layer: int, name: str
) -> None:
    layers = len(model.model.layers)
    if not 0 <= layer < layers:
        raise ValueError(f"Layer {layer} does not exist: {name} has layers 0-{layers - 1}.")
    width = model.config.hidden_size
    if sae.d_in != width:
        raise ValueError(
            f"The SAE reads vectors of size {sae.d_in}, but {name}'s residual stream has size "
            f"{width}: they do not belong together."
        )


def _sae_name(source: str) -> str:
    """A stable, readable id for the SAE: the hub path, or the local path's last parts."""
    if source.startswith("hf:"):
        return source.removeprefix("hf:")
    path = Path(source)
    return "/".join(path.resolve().parts[-2:])
