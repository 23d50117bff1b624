"""Sparse autoencoders over a model's residual stream, and loaders for the formats people publish.

Formats:
- SAELens: a directory with `cfg.json` and `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc,
  W_dec [d_sae, d_in], b_dec, and `threshold` for JumpReLU).
- Goodfire: a torch state dict (`.pth`/`.pt`) of two nn.Linear layers, `encoder_linear` and
  `decoder_linear` (so `encoder_linear.weight` is [d_sae, d_in]); ReLU.
- Gemma Scope: `params.npz` with W_enc, W_dec, b_enc, b_dec and `threshold`; JumpReLU.
- `hf:<owner>/<repo>/<path in repo>`: any of the above, fetched with huggingface_hub.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from server.model.hub import download

Activation = Literal["relu", "jumprelu", "topk"]
T = TypeVar("T")
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GOODFIRE_KEYS = (
    "encoder_linear.weight",
    "encoder_linear.bias",
    "decoder_linear.weight",
    "decoder_linear.bias",
)
GEMMA_SCOPE_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
# Residual-stream hook names: TransformerLens style (blocks.12.hook_resid_post) or module paths
# (model.layers.12). A block's resid_pre is the previous block's output.
RESIDUAL_HOOK = re.compile(r"(?:blocks|layers)\.(\d+)(?:\.hook_resid_(pre|post))?$")


class SparseAutoencoder(torch.nn.Module):
    """encode(x) = act(x_in @ W_enc + b_enc), decode(f) = f @ W_dec + b_dec.

    `x_in` is `x - b_dec` when `apply_b_dec_to_input` (SAELens' option), else `x`. The
    activation is ReLU, JumpReLU (ReLU, zeroed where the pre-activation is at most `threshold`)
    or top-k (ReLU of the k largest pre-activations, zero elsewhere).
    """

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        *,
        activation: Activation = "relu",
        threshold: Tensor | None = None,
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        hook_layer: int | None = None,
    ) -> None:
        super().__init__()
        d_in, d_sae = W_enc.shape
        _check_shapes(W_enc, b_enc, W_dec, b_dec, threshold)
        if activation == "jumprelu" and threshold is None:
            raise ValueError("A JumpReLU SAE needs a `threshold` tensor of shape [d_sae].")
        if activation == "topk" and (k is None or not 0 < k <= d_sae):
            raise ValueError(f"A top-k SAE needs k between 1 and d_sae ({d_sae}), got {k}.")
        self.d_in, self.d_sae = int(d_in), int(d_sae)
        self.W_enc = torch.nn.Parameter(W_enc, requires_grad=False)
        self.b_enc = torch.nn.Parameter(b_enc, requires_grad=False)
        self.W_dec = torch.nn.Parameter(W_dec, requires_grad=False)
        self.b_dec = torch.nn.Parameter(b_dec, requires_grad=False)
        self.threshold = (
            None if threshold is None else torch.nn.Parameter(threshold, requires_grad=False)
        )
        self.activation: Activation = activation
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.hook_layer = hook_layer

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] feature activations, with the SAE's own activation."""
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        if self.activation == "topk":
            assert self.k is not None
            values, indices = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return torch.relu(pre)

    def decode(self, f: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in] reconstruction."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _check_shapes(
    W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, threshold: Tensor | None
) -> None:
    if W_enc.ndim != 2:
        raise ValueError(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(W_enc.shape)}.")
    d_in, d_sae = W_enc.shape
    expected = {
        "b_enc": (b_enc, (d_sae,)),
        "W_dec": (W_dec, (d_sae, d_in)),
        "b_dec": (b_dec, (d_in,)),
    }
    if threshold is not None:
        expected["threshold"] = (threshold, (d_sae,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"SAE shape mismatch: W_enc is {tuple(W_enc.shape)} (d_in={d_in}, d_sae={d_sae}), "
                f"so {name} should be {shape}, got {tuple(tensor.shape)}."
            )


# ---- loading -----------------------------------------------------------------------------------


def load_sae(
    source: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> SparseAutoencoder:
    """Load an SAE from a SAELens directory, a Goodfire `.pt`/`.pth`, a Gemma Scope `.npz`, or
    `hf:<owner>/<repo>[/<path in repo>]` (any of those, downloaded from the Hugging Face Hub)."""
    path = download(source) if source.startswith("hf:") else Path(source)
    if path.is_dir():
        sae = _load_saelens(path)
    elif not path.is_file():
        raise ValueError(f"SAE not found: {path}")
    elif path.suffix in (".pt", ".pth"):
        sae = _load_goodfire(path)
    elif path.suffix == ".npz":
        sae = _load_gemma_scope(path)
    elif path.name == SAELENS_CONFIG or path.suffix == ".safetensors":
        sae = _load_saelens(path.parent)
    else:
        raise ValueError(
            f"Unknown SAE format: {path}. Expected a SAELens directory (cfg.json + "
            f"{SAELENS_WEIGHTS}), a Goodfire .pt/.pth state dict or a Gemma Scope .npz."
        )
    return sae.to(device=device, dtype=dtype)


def _load_saelens(directory: Path) -> SparseAutoencoder:
    config_path, weights_path = directory / SAELENS_CONFIG, directory / SAELENS_WEIGHTS
    for required in (config_path, weights_path):
        if not required.is_file():
            raise ValueError(f"{directory} is not a SAELens SAE: {required.name} is missing.")
    config = _read_config(config_path)
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Cannot read {weights_path}: {error}") from error
    where = str(directory)
    activation, k = _saelens_activation(config, where)
    if config.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{where}: normalize_activations={config['normalize_activations']!r} is not "
            "supported; fold the scaling factor into the weights (SAELens: "
            "fold_activation_norm_scaling_factor) and save it with 'none'."
        )
    tensors = _require(weights, ("W_enc", "b_enc", "W_dec", "b_dec"), where)
    sae = SparseAutoencoder(
        *tensors,
        activation=activation,
        threshold=_jumprelu_threshold(weights, activation, where),
        k=k,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        hook_layer=_hook_layer(config, where),
    )
    _check_declared_sizes(sae, config, where)
    return sae


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} should hold a JSON object.")
    return config


def _saelens_activation(config: dict[str, Any], where: str) -> tuple[Activation, int | None]:
    """SAELens 6 names the architecture ('standard', 'jumprelu', 'topk' with a top-level k);
    older files say architecture 'standard' with activation_fn_str 'topk' and k in
    activation_fn_kwargs."""
    architecture = config.get("architecture", "standard")
    function = config.get("activation_fn_str") or config.get("activation_fn") or "relu"
    if architecture == "standard" and function == "topk":
        architecture = "topk"
    elif architecture == "standard" and function != "relu":
        raise ValueError(f"{where}: activation function {function!r} is not supported.")
    names: dict[str, Activation] = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
    if architecture not in names:
        raise ValueError(
            f"{where}: SAE architecture {architecture!r} is not supported "
            f"(supported: {', '.join(names)})."
        )
    if names[architecture] != "topk":
        return names[architecture], None
    k = config.get("k", (config.get("activation_fn_kwargs") or {}).get("k"))
    if not isinstance(k, int):
        raise ValueError(f"{where}: a top-k SAE needs an integer 'k' in cfg.json.")
    return "topk", k


def _jumprelu_threshold(
    weights: dict[str, Tensor], activation: Activation, where: str
) -> Tensor | None:
    if activation != "jumprelu":
        return None
    if "threshold" in weights:
        return weights["threshold"]
    if "log_threshold" in weights:  # a training checkpoint
        return weights["log_threshold"].exp()
    raise ValueError(f"{where}: a JumpReLU SAE needs a 'threshold' tensor in its weights.")


def _hook_layer(config: dict[str, Any], where: str) -> int | None:
    """The decoder layer whose output the SAE reads, from cfg.json."""
    hook_name = _metadata(config, "hook_name", str)
    if hook_name is None:
        return _metadata(config, "hook_layer", int)
    match = RESIDUAL_HOOK.search(hook_name)
    layer = None if match is None else int(match.group(1)) - (match.group(2) == "pre")
    if layer is None or layer < 0:
        raise ValueError(
            f"{where}: this SAE reads {hook_name!r}; the server hooks a decoder layer's output "
            "(the residual stream: hook_resid_post, or hook_resid_pre after the first block)."
        )
    return layer


def _metadata(config: dict[str, Any], key: str, kind: type[T]) -> T | None:
    """`key` from the top level of cfg.json, or from its metadata section (SAELens 6)."""
    for section in (config, config.get("metadata") or {}, config.get("meta") or {}):
        if isinstance(section.get(key), kind):
            return section[key]  # type: ignore[no-any-return]
    return None


def _check_declared_sizes(sae: SparseAutoencoder, config: dict[str, Any], where: str) -> None:
    for name in ("d_in", "d_sae"):
        declared = config.get(name)
        if declared is not None and declared != getattr(sae, name):
            raise ValueError(
                f"{where}: cfg.json says {name}={declared}, but the weights have "
                f"{name}={getattr(sae, name)}."
            )


def _load_goodfire(path: Path) -> SparseAutoencoder:
    """Goodfire's release: nn.Linear encoder/decoder weights, ReLU, layer in the file name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"Cannot read {path} as a PyTorch state dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    encoder_weight, encoder_bias, decoder_weight, decoder_bias = _require(
        state, GOODFIRE_KEYS, str(path)
    )
    return SparseAutoencoder(
        encoder_weight.T.contiguous(),
        encoder_bias,
        decoder_weight.T.contiguous(),
        decoder_bias,
        activation="relu",
        hook_layer=_layer_from_name(path.stem),
    )


def _layer_from_name(name: str) -> int | None:
    """'Llama-3.1-8B-Instruct-SAE-l19' -> 19."""
    match = re.search(r"-l(\d+)$", name)
    return int(match.group(1)) if match else None


def _load_gemma_scope(path: Path) -> SparseAutoencoder:
    """Gemma Scope's params.npz: JumpReLU; the layer is in the path (layer_20/width_16k/...)."""
    try:
        with np.load(path) as archive:
            arrays = {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path} as a NumPy .npz archive: {error}") from error
    W_enc, b_enc, W_dec, b_dec, threshold = _require(arrays, GEMMA_SCOPE_KEYS, str(path))
    layer = next(
        (
            int(part.removeprefix("layer_"))
            for part in path.parts
            if re.fullmatch(r"layer_\d+", part)
        ),
        None,
    )
    return SparseAutoencoder(
        W_enc, b_enc, W_dec, b_dec, activation="jumprelu", threshold=threshold, hook_layer=layer
    )


def _require(tensors: dict[str, Any], keys: tuple[str, ...], where: str) -> list[Tensor]:
    missing = [key for key in keys if key not in tensors]
    if missing:
        found = ", ".join(sorted(tensors)[:8]) or "nothing"
        raise ValueError(f"{where}: missing {', '.join(missing)} (found: {found}).")
    values = [tensors[key] for key in keys]
    for key, value in zip(keys, values, strict=True):
        if not isinstance(value, Tensor):
            raise ValueError(f"{where}: {key} is a {type(value).__name__}, not a tensor.")
    return [value.float() for value in values]
