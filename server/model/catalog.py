"""The catalogue of real model + SAE pairs the server has presets for.

Each entry names an instruction-tuned chat model, a SAELens release/id for its residual-stream SAE
(resolved through the pinned SAELens facts in `saelens_releases`; a test checks that they agree)
and where Neuronpedia publishes the SAE's labels. Sizes are from the models' configs and model
cards; memory is the weights of model and SAE, before activations and the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.model.saelens_releases import SaeFormat, SaeSource, resolve

GIB = 1024**3
BF16_BYTES, FP32_BYTES = 2, 4


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    model: str  # Hugging Face model id
    release: str  # SAELens release
    sae_id: str  # SAELens SAE id within the release
    layer: int  # decoder layer whose output the SAE reads (hidden_states[layer + 1])
    d_sae: int  # SAE width (features)
    d_model: int  # the model's hidden size, the SAE's d_in
    layers: int  # the model's decoder layers
    format: SaeFormat
    neuronpedia: tuple[str, str] | None  # (model id, source id) of the labels, None: no labels
    parameters: int  # the model's parameter count (approximate, from its model card)
    description: str

    @property
    def sae(self) -> str:
        """The SAELens name `--sae` accepts: release/id."""
        return f"{self.release}/{self.sae_id}"

    def source(self) -> SaeSource:
        return resolve(self.sae)

    @property
    def sae_parameters(self) -> int:
        """W_enc, W_dec, b_enc, b_dec (and a JumpReLU threshold)."""
        threshold = self.d_sae if self.format == "gemma-scope-2" else 0
        return 2 * self.d_model * self.d_sae + self.d_sae + self.d_model + threshold

    @property
    def memory_bf16_gib(self) -> float:
        return (self.parameters + self.sae_parameters) * BF16_BYTES / GIB

    @property
    def memory_cpu_gib(self) -> float:
        """float32, the server's default dtype on a CPU."""
        return (self.parameters + self.sae_parameters) * FP32_BYTES / GIB


def _pair(
    family: str,
    size: str,
    layer: int,
    sizes: tuple[int, int],
    parameters: int,
    note: str,
    labelled: bool = True,
) -> CatalogEntry:
    """A Gemma 3 IT model with its Gemma Scope 2 16k residual SAE (family 'gemma'), or a Llama
    Instruct model with Goodfire's SAE (family 'llama-3.1', 'llama-3.3')."""
    d_model, layers = sizes
    if family == "gemma":
        name = f"gemma-3-{size}-it"
        model, labels = f"google/{name}", (name, f"{layer}-gemmascope-2-res-16k")
        sae = f"gemma-scope-2-{size}-it-res/layer_{layer}_width_16k_l0_medium"
        d_sae, kind = 16384, "the Gemma Scope 2 residual SAE"
        what = f"Gemma 3 {size.upper()} instruct"
    else:
        version = family.removeprefix("llama-")
        name = f"llama-{version}-{size.lower()}"
        model = f"meta-llama/Llama-{version}-{size}-Instruct"
        labels = (f"llama{version}-{size.lower()}-it", f"{layer}-resid-post-gf")
        sae = f"goodfire-llama-{version}-{size.lower()}-instruct/layer_{layer}"
        d_sae, kind, what = 65536, "Goodfire's residual SAE", f"Llama {version} {size} Instruct"
    release, sae_id = sae.split("/")
    activation = "JumpReLU" if family == "gemma" else "ReLU"
    return CatalogEntry(
        name=name,
        model=model,
        release=release,
        sae_id=sae_id,
        layer=layer,
        d_sae=d_sae,
        d_model=d_model,
        layers=layers,
        format="gemma-scope-2" if family == "gemma" else "goodfire",
        neuronpedia=labels if labelled else None,
        parameters=parameters,
        description=f"{what} with {kind} on layer {layer} ({d_sae:,} features, {activation}): "
        + note,
    )


GATED = " Gated: needs HF_TOKEN and Meta's licence accepted."
NO_LABELS = " Neuronpedia has no labels for the 12B SAEs (SAELens lists none): features by index."
CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        _pair("gemma", "270m", 12, (640, 18), 268_098_176, "a real chat model for a laptop CPU."),
        _pair("gemma", "1b", 13, (1152, 26), 999_885_952, "CPU-friendly, better replies."),
        _pair("gemma", "4b", 17, (2560, 34), 4_300_079_472, "one GPU."),
        _pair("gemma", "12b", 24, (3840, 48), 12_187_325_040, "one large GPU." + NO_LABELS, False),
        _pair("gemma", "27b", 16, (5376, 62), 27_432_406_640, "one 80 GB GPU, or several."),
        _pair("llama-3.1", "8B", 19, (4096, 32), 8_030_261_248, "one GPU." + GATED),
        _pair("llama-3.3", "70B", 50, (8192, 80), 70_553_706_496, "several GPUs." + GATED),
    )
}

TINY_ROW = ("tiny", "ember-tiny (built in memory)", "ember-tiny-sae", "1", "512", "-", "-", "-")


def preset_table() -> str:
    """The presets as an aligned text table, for `ember-bot serve --list-presets`."""
    header = ("PRESET", "MODEL", "SAE", "LAYER", "WIDTH", "PARAMS", "BF16", "FP32 CPU", "LABELS")
    rows = [header, (*TINY_ROW, "yes (built in)")]
    for entry in CATALOG.values():
        rows.append(
            (
                entry.name,
                entry.model,
                entry.sae,
                str(entry.layer),
                f"{entry.d_sae:,}",
                _count(entry.parameters),
                f"{entry.memory_bf16_gib:.1f} GiB",
                f"{entry.memory_cpu_gib:.1f} GiB",
                "yes (Neuronpedia)" if entry.neuronpedia else "no",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _count(parameters: int) -> str:
    if parameters < 950_000_000:
        return f"{parameters / 10**6:.0f}M"
    return f"{parameters / 10**9:.1f}B"
