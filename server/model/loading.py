"""Loading what is served: a Hugging Face causal LM, its tokenizer, and an SAE on one layer.

The model goes on one device, across every visible GPU (`device_map="auto"`, through
accelerate), or quantised to 8 or 4 bits (bitsandbytes, on an NVIDIA GPU). Before any weight is
read, the memory it needs is estimated from its config.json and compared with what is free
(memory.py); what cannot fit is refused in one line. The SAE stays in the model's dtype on the
device of the layer it reads, and every parameter is frozen: the server never trains.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from server.labelling.sources import with_label_file
from server.model.labels import LabelIndex
from server.model.memory import estimate_memory, free_memory, text_config
from server.model.sae import SparseAutoencoder, load_sae

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO = "auto"
DEVICE_MAPS = ("none", "auto")
QUANTIZATIONS = ("none", "8bit", "4bit")


def say(line: str) -> None:
    """Progress for whoever started the server (stderr: stdout is the serving log)."""
    print(line, file=sys.stderr, flush=True)


class NotEnoughMemory(ValueError):
    """The model and SAE would not fit in the memory that is free (one line, for the CLI)."""


@dataclass
class ModelBundle:
    model: transformers.PreTrainedModel  # eval mode, parameters frozen
    tokenizer: transformers.PreTrainedTokenizerBase  # has a chat template
    sae: SparseAutoencoder  # on the hooked layer's device
    layer: int  # index into the decoder's layers whose output is the hooked residual stream
    labels: LabelIndex
    model_id: str  # the served model name
    sae_id: str


def load_bundle(
    model: str,
    sae: str,
    layer: int | None,
    labels: str | None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str = "none",
    quantize: str = "none",
    check_memory: bool = True,
    embedding: Path | None = None,
) -> ModelBundle:
    """A Hugging Face causal LM (hub id or local path) with `sae` hooked after decoder `layer`
    (None: the layer the SAE's own metadata names). `device`/`dtype` may be "auto";
    `device_map="auto"` spreads the model over every visible GPU; `quantize` is "8bit" or
    "4bit" (bitsandbytes). Refuses with NotEnoughMemory when the estimate exceeds the free
    memory, unless `check_memory` is False. `embedding`: the folder of the sentence-embedding
    model that feature search embeds the labels with (None: no semantic search)."""
    device = placement_device(device, device_map)
    torch_dtype = resolve_dtype(dtype, device)
    check_requirements(device, device_map, quantize)
    free = free_memory(device, across_gpus=device_map == AUTO)
    autoencoder, hooked, config = sae_for_model(model, sae, layer, torch_dtype)
    estimate = estimate_memory(
        config,
        dtype=torch_dtype,
        quantize=quantize,
        sae_shape=(autoencoder.d_in, autoencoder.d_sae),
    )
    line = f"{estimate.describe()}; {free.describe()}."
    say(line)
    if check_memory and free.bytes is not None and estimate.total > free.bytes:
        raise NotEnoughMemory(
            f"{line} It does not fit: try --quantize 4bit or 8bit, --device-map auto with more "
            "GPUs, or a smaller model (--ignore-memory-check tries anyway)."
        )
    tokenizer = chat_tokenizer(model)
    options = placement(device, device_map, quantize, torch_dtype)
    network = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **options)
    if "device_map" not in options:
        network.to(device)  # type: ignore[arg-type]  # transformers mistypes .to()
    freeze(network)
    freeze(autoencoder)
    autoencoder.to(layer_device(network, hooked))
    return ModelBundle(
        network,
        tokenizer,
        autoencoder,
        hooked,
        served_labels(labels, autoencoder.d_sae, embedding=embedding, device=device),
        model_id=model,
        sae_id=_sae_name(sae),
    )


def sae_for_model(
    model: str, sae: str, layer: int | None, torch_dtype: torch.dtype
) -> tuple[SparseAutoencoder, int, transformers.PretrainedConfig]:
    """The SAE (on the CPU), the layer it hooks (`layer`, else the one its metadata names) and
    the model's config, checked to fit each other."""
    autoencoder = load_sae(sae, device="cpu", dtype=torch_dtype)
    hooked = layer if layer is not None else autoencoder.hook_layer
    if hooked is None:
        raise ValueError(f"The SAE {sae!r} does not say which layer it reads; pass --layer.")
    config = transformers.AutoConfig.from_pretrained(model)
    check_fit(config, autoencoder, hooked, model)
    return autoencoder, hooked, config


def chat_tokenizer(model: str) -> transformers.PreTrainedTokenizerBase:
    """The model's tokenizer, refused when it has no chat template (a base model)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    if not tokenizer.chat_template:
        raise ValueError(f"The model {model!r} has no chat template; use an instruct model.")
    return tokenizer


def served_labels(
    labels: str | None, d_sae: int, *, embedding: Path | None, device: str
) -> LabelIndex:
    """The label index of an SAE of `d_sae` features (see load_bundle), with the generated
    labels' detection scores; its search embedder on the served model's GPU, else the CPU."""
    return with_label_file(
        LabelIndex.load(
            labels, d_sae, embedding=embedding, device=_embedder_device(device), say=say
        ),
        labels,
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


def placement_device(device: str, device_map: str) -> str:
    """The device the model goes to: `device` resolved; with device_map="auto", the GPUs
    ("cuda") when there are any, else the CPU, and `device` must be "auto" or agree."""
    if device_map not in DEVICE_MAPS:
        raise ValueError(f"Unknown device map {device_map!r}; choose one of: none, auto.")
    if device_map != AUTO:
        return resolve_device(device)
    spread = resolve_device(AUTO)
    if device != AUTO and torch.device(device).type != spread:
        raise ValueError(
            f"--device-map auto places the model on every visible {spread.upper()} device itself; "
            f"drop --device {device} (CUDA_VISIBLE_DEVICES picks the GPUs)."
        )
    return spread


def check_requirements(device: str, device_map: str, quantize: str) -> None:
    """One line for each option this machine cannot honour, naming what to install."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantisation {quantize!r}; choose one of: none, 8bit, 4bit.")
    if quantize != "none":
        if torch.device(device).type != "cuda":
            raise ValueError(
                f"--quantize {quantize} needs an NVIDIA GPU (bitsandbytes quantises on CUDA) and "
                f"the model goes to {device}; use --dtype bfloat16 instead."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                f"--quantize {quantize} needs the bitsandbytes package: "
                "pip install 'ember-bot[gpu]' (or pip install bitsandbytes)."
            )
    if (device_map == AUTO or quantize != "none") and not _has_accelerate():
        option = "--device-map auto" if device_map == AUTO else f"--quantize {quantize}"
        raise ValueError(
            f"{option} needs the accelerate package: pip install 'ember-bot[server]' "
            "(or pip install accelerate)."
        )


def placement(device: str, device_map: str, quantize: str, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained's placement options: a device map (weights are read straight onto
    their devices, with no copy in host RAM first) and the quantisation config."""
    options: dict[str, Any] = {}
    if device_map == AUTO:
        options["device_map"] = AUTO
    elif device != "cpu" and _has_accelerate():
        options["device_map"] = {"": device}
    if quantize == "8bit":
        options["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
    elif quantize == "4bit":
        options["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return options


def decoder_layers(model: transformers.PreTrainedModel) -> torch.nn.ModuleList:
    """The text decoder's layers, also where the checkpoint is multimodal (Gemma 3 4B and up
    load as Gemma3ForConditionalGeneration: model.language_model.layers, not model.layers)."""
    layers = model.get_decoder().layers
    assert isinstance(layers, torch.nn.ModuleList)
    return layers


def layer_device(model: transformers.PreTrainedModel, layer: int) -> torch.device:
    """Where decoder `layer` computes: its device in the model's device map (a layer offloaded
    to the CPU or disk runs on the map's first GPU, as accelerate's hooks run it), else the
    device of its parameters."""
    device_map: dict[str, Any] = getattr(model, "hf_device_map", None) or {}
    hooked = decoder_layers(model)[layer]
    name = next(name for name, module in model.named_modules() if module is hooked)
    for module, where in sorted(device_map.items(), key=lambda item: -len(item[0])):
        if module in ("", name) or name.startswith(f"{module}."):
            if str(where) in ("cpu", "disk"):
                gpus = [w for w in device_map.values() if str(w) not in ("cpu", "disk")]
                where = gpus[0] if gpus else "cpu"
            return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)
    return next(hooked.parameters()).device


def freeze(module: torch.nn.Module) -> None:
    """No gradients for any parameter (and eval mode): nothing the server runs keeps them."""
    module.requires_grad_(False)
    module.eval()


def check_fit(config: Any, sae: SparseAutoencoder, layer: int, name: str) -> None:
    """The layer exists and the SAE reads vectors of the residual stream's size (config only,
    so a pair that does not belong together is refused before the weights are read)."""
    text = text_config(config)
    layers = int(text.num_hidden_layers)
    if not 0 <= layer < layers:
        raise ValueError(f"Layer {layer} does not exist: {name} has layers 0-{layers - 1}.")
    width = int(text.hidden_size)
    if sae.d_in != width:
        raise ValueError(
            f"The SAE reads vectors of size {sae.d_in}, but {name}'s residual stream has size "
            f"{width}: they do not belong together."
        )


def _embedder_device(device: str) -> str:
    """The search embedder's device: the served model's GPU, else the CPU."""
    return device if torch.device(device).type == "cuda" else "cpu"


def _has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def _sae_name(source: str) -> str:
    """A stable, readable id for the SAE: the hub path, or the local path's last parts."""
    if source.startswith("hf:"):
        return source.removeprefix("hf:")
    path = Path(source)
    return "/".join(path.resolve().parts[-2:])
