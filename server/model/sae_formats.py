"""Readers of the SAE file formats people publish; each returns the tensors and options of a
`server.model.sae.SparseAutoencoder` (`SaeParts`), or refuses with one clear line.

- SAELens: a directory with `cfg.json` and `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc,
  W_dec [d_sae, d_in], b_dec, and `threshold` for JumpReLU); SAELens 6 configs and older ones
  (hook_point/hook_point_layer, activation_fn_str, boolean normalize_activations).
- Goodfire: a torch state dict (`.pth`/`.pt`) of two nn.Linear layers, `encoder_linear` and
  `decoder_linear` (so `encoder_linear.weight` is [d_sae, d_in]); ReLU.
- Gemma Scope: `params.npz` with W_enc, W_dec, b_enc, b_dec and `threshold`; JumpReLU.
- Gemma Scope 2: `params.safetensors` with w_enc, w_dec, b_enc, b_dec and `threshold` (lowercase);
  JumpReLU, no b_dec subtraction on the input; an optional `config.json` beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

Activation = Literal["relu", "jumprelu", "topk"]
T = TypeVar("T")
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_2_WEIGHTS = "params.safetensors"
GEMMA_SCOPE_2_CONFIG = "config.json"
GOODFIRE_KEYS = (
    "encoder_linear.weight",
    "encoder_linear.bias",
    "decoder_linear.weight",
    "decoder_linear.bias",
)
GEMMA_SCOPE_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
GEMMA_SCOPE_2_KEYS = ("w_enc", "b_enc", "w_dec", "b_dec", "threshold")
# Residual-stream hook names: TransformerLens style (blocks.12.hook_resid_post) or module paths
# (model.layers.12). A block's resid_pre is the previous block's output.
RESIDUAL_HOOK = re.compile(r"(?:blocks|layers)\.(\d+)(?:\.hook_resid_(pre|post))?$")
# SAELens before 6.0 named these differently (its handle_pre_6_0_config renames them too).
LEGACY_SAELENS_KEYS = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
}


@dataclass
class SaeParts:
    """What a file holds: the SparseAutoencoder constructor's arguments."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    activation: Activation = "relu"
    threshold: Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = False
    hook_layer: int | None = None


def read_sae(path: Path) -> SaeParts:
    """The SAE in the file or folder `path`, whichever format it is in."""
    if path.is_dir():
        if (path / GEMMA_SCOPE_2_WEIGHTS).is_file() and not (path / SAELENS_CONFIG).exists():
            return read_gemma_scope_2(path / GEMMA_SCOPE_2_WEIGHTS)
        return read_saelens(path)
    if not path.is_file():
        raise ValueError(f"SAE not found: {path}")
    if path.suffix in (".pt", ".pth"):
        return read_goodfire(path)
    if path.suffix == ".npz":
        return read_gemma_scope(path)
    if path.name == GEMMA_SCOPE_2_WEIGHTS:
        return read_gemma_scope_2(path)
    if path.name == SAELENS_CONFIG or path.suffix == ".safetensors":
        return read_saelens(path.parent)
    raise ValueError(
        f"Unknown SAE format: {path}. Expected a SAELens directory (cfg.json + "
        f"{SAELENS_WEIGHTS}), a Goodfire .pt/.pth state dict, a Gemma Scope .npz or a Gemma "
        f"Scope 2 {GEMMA_SCOPE_2_WEIGHTS}."
    )


# ---- SAELens -----------------------------------------------------------------------------------


def read_saelens(directory: Path) -> SaeParts:
    config_path, weights_path = directory / SAELENS_CONFIG, directory / SAELENS_WEIGHTS
    for required in (config_path, weights_path):
        if not required.is_file():
            raise ValueError(f"{directory} is not a SAELens SAE: {required.name} is missing.")
    config = read_config(config_path)
    for old, new in LEGACY_SAELENS_KEYS.items():
        if old in config:
            config.setdefault(new, config[old])
    weights = _read_safetensors(weights_path)
    where = str(directory)
    activation, k = _saelens_activation(config, where)
    _check_normalization(config.get("normalize_activations"), where)
    _check_scaling_factor(weights, where)
    W_enc, b_enc, W_dec, b_dec = _require(weights, ("W_enc", "b_enc", "W_dec", "b_dec"), where)
    parts = SaeParts(
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        activation=activation,
        threshold=_jumprelu_threshold(weights, activation, where),
        k=k,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        hook_layer=_hook_layer(config, where),
    )
    _check_declared_sizes(parts, config, where)
    if config.get("rescale_acts_by_decoder_norm"):
        if activation != "topk":
            raise ValueError(
                f"{where}: rescale_acts_by_decoder_norm is supported for top-k SAEs only."
            )
        _fold_decoder_norm(parts)
    return parts


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} should hold a JSON object.")
    return config


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from error


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


def _check_normalization(value: Any, where: str) -> None:
    """SAELens before 6.0 wrote a bool: false is 'none', true its 'expected_average_only_in'."""
    if value in (None, False, "none"):
        return
    shown = "expected_average_only_in" if value is True else value
    raise ValueError(
        f"{where}: normalize_activations={shown!r} is not supported; fold the scaling factor into "
        "the weights (SAELens: fold_activation_norm_scaling_factor) and save it with 'none'."
    )


def _check_scaling_factor(weights: dict[str, Tensor], where: str) -> None:
    """Old SAELens files may hold a `scaling_factor`; SAELens drops it when it is all ones."""
    factor = weights.pop("scaling_factor", None)
    if factor is not None and not torch.all(factor == 1):
        raise ValueError(f"{where}: a fine-tuning scaling_factor other than 1 is not supported.")


def _fold_decoder_norm(parts: SaeParts) -> None:
    """SAELens' TopK with rescale_acts_by_decoder_norm: encode multiplies the pre-activations by
    each feature's decoder row norm before top-k, decode divides the activations by it. Folding
    the norms into W_enc and b_enc and unit-normalising W_dec gives the same encode and decode
    (SAELens' own fold_W_dec_norm for TopK does this)."""
    norms = parts.W_dec.norm(dim=-1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    parts.W_enc = parts.W_enc * norms
    parts.b_enc = parts.b_enc * norms
    parts.W_dec = parts.W_dec / safe[:, None]


def _jumprelu_threshold(
    weights: dict[str, Tensor], activation: Activation, where: str
) -> Tensor | None:
    if activation != "jumprelu":
        return None
    if "threshold" in weights:
        return weights["threshold"].float()
    if "log_threshold" in weights:  # a training checkpoint
        return weights["log_threshold"].float().exp()
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


def _check_declared_sizes(parts: SaeParts, config: dict[str, Any], where: str) -> None:
    actual = dict(zip(("d_in", "d_sae"), parts.W_enc.shape, strict=False))
    for name, size in actual.items():
        declared = config.get(name)
        if declared is not None and declared != size:
            raise ValueError(
                f"{where}: cfg.json says {name}={declared}, but the weights have {name}={size}."
            )


# ---- Goodfire and Gemma Scope ------------------------------------------------------------------


def read_goodfire(path: Path) -> SaeParts:
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
    match = re.search(r"-l(\d+)$", path.stem)  # 'Llama-3.1-8B-Instruct-SAE-l19' -> 19
    return SaeParts(
        encoder_weight.T.contiguous(),
        encoder_bias,
        decoder_weight.T.contiguous(),
        decoder_bias,
        hook_layer=int(match.group(1)) if match else None,
    )


def read_gemma_scope(path: Path) -> SaeParts:
    """Gemma Scope's params.npz: JumpReLU; the layer is in the path (layer_20/width_16k/...)."""
    try:
        with np.load(path) as archive:
            arrays = {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path} as a NumPy .npz archive: {error}") from error
    W_enc, b_enc, W_dec, b_dec, threshold = _require(arrays, GEMMA_SCOPE_KEYS, str(path))
    return SaeParts(
        W_enc, b_enc, W_dec, b_dec, "jumprelu", threshold, hook_layer=_layer_in_path(path)
    )


def read_gemma_scope_2(path: Path) -> SaeParts:
    """Gemma Scope 2's params.safetensors (resid_post/layer_12_width_16k_l0_medium/...): JumpReLU,
    the layer from config.json's hf_hook_point_in when it is there, else from the folder name."""
    where = str(path)
    config_path = path.with_name(GEMMA_SCOPE_2_CONFIG)
    config = read_config(config_path) if config_path.is_file() else {}
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise ValueError(f"{where}: architecture {config['architecture']!r} is not supported.")
    hook = config.get("hf_hook_point_in")
    if config.get("hf_hook_point_out") or re.search(r"attn_out|mlp_out|transcoder|clt", where):
        raise ValueError(f"{where}: only residual-stream SAEs (resid_post) are supported.")
    match = re.search(r"layers\.(\d+)\.output$", hook) if isinstance(hook, str) else None
    if hook is not None and match is None:
        raise ValueError(
            f"{where}: this SAE reads {hook!r}; the server hooks a decoder layer's output."
        )
    W_enc, b_enc, W_dec, b_dec, threshold = _require(
        _read_safetensors(path), GEMMA_SCOPE_2_KEYS, where
    )
    layer = int(match.group(1)) if match else _layer_in_path(path)
    return SaeParts(W_enc, b_enc, W_dec, b_dec, "jumprelu", threshold, hook_layer=layer)


def _layer_in_path(path: Path) -> int | None:
    """The layer a folder names: layer_20 (Gemma Scope) or layer_12_width_16k_… (Gemma Scope 2)."""
    for part in reversed(path.parts[:-1]):
        match = re.fullmatch(r"layer_(\d+)(?:_.*)?", part)
        if match:
            return int(match.group(1))
    return None


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
