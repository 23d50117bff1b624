"""Writers of the on-disk SAE formats people publish, for loader tests.

Each writes what the real releases contain:
- SAELens: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in],
  b_dec, `threshold` for JumpReLU), config in SAELens 6 style (architecture, k, `metadata`) or
  the older flat style (hook_name/hook_layer at top level, activation_fn_str, activation_fn_kwargs);
- Goodfire: `torch.save` of an nn.Module state dict with `encoder_linear` = nn.Linear(d_in, d_sae)
  and `decoder_linear` = nn.Linear(d_sae, d_in);
- Gemma Scope: `params.npz` with W_enc, W_dec, b_enc, b_dec, threshold (float32);
- Gemma Scope 2: `params.safetensors` with lowercase w_enc, w_dec, b_enc, b_dec, threshold, and
  optionally the `config.json` SAELens reads beside it (architecture, hf_hook_point_in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Weights:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor
    threshold: torch.Tensor

    @classmethod
    def random(cls, d_in: int = 16, d_sae: int = 48, seed: int = 0) -> Weights:
        generator = torch.Generator().manual_seed(seed)

        def normal(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=generator) * scale

        return cls(
            W_enc=normal(d_in, d_sae, scale=0.3),
            b_enc=normal(d_sae, scale=0.1),
            W_dec=normal(d_sae, d_in, scale=0.3),
            b_dec=normal(d_in, scale=0.1),
            threshold=torch.rand(d_sae, generator=generator) * 0.5,
        )


def write_saelens(
    directory: Path,
    weights: Weights,
    *,
    architecture: str = "standard",
    hook_name: str = "blocks.1.hook_resid_post",
    apply_b_dec_to_input: bool = False,
    k: int | None = None,
    legacy: bool = False,
    **extra_config: Any,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_enc": weights.W_enc,
        "b_enc": weights.b_enc,
        "W_dec": weights.W_dec,
        "b_dec": weights.b_dec,
    }
    if architecture == "jumprelu":
        tensors["threshold"] = weights.threshold
    save_file(
        {name: tensor.contiguous() for name, tensor in tensors.items()},
        directory / "sae_weights.safetensors",
    )
    d_in, d_sae = weights.W_enc.shape
    config: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "normalize_activations": "none",
    }
    if legacy:  # SAELens <= 5: flat metadata, top-k as an activation function
        config |= {
            "architecture": "standard" if architecture == "topk" else architecture,
            "activation_fn_str": "topk" if architecture == "topk" else "relu",
            "activation_fn_kwargs": {"k": k} if architecture == "topk" else {},
            "model_name": "tiny",
            "hook_name": hook_name,
            "hook_layer": int(hook_name.split(".")[1]),
            "hook_head_index": None,
            "context_size": 128,
        }
    else:
        config |= {
            "architecture": architecture,
            "reshape_activations": "none",
            "metadata": {"model_name": "tiny", "hook_name": hook_name, "context_size": 128},
        }
        if architecture == "topk":
            config["k"] = k
    config |= extra_config
    (directory / "cfg.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


class _GoodfireSae(torch.nn.Module):
    """The module layout of Goodfire's released SAEs."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        self.encoder_linear = torch.nn.Linear(d_in, d_sae)
        self.decoder_linear = torch.nn.Linear(d_sae, d_in)


def write_goodfire(path: Path, weights: Weights) -> Path:
    d_in, d_sae = weights.W_enc.shape
    module = _GoodfireSae(d_in, d_sae)
    with torch.no_grad():
        module.encoder_linear.weight.copy_(weights.W_enc.T)
        module.encoder_linear.bias.copy_(weights.b_enc)
        module.decoder_linear.weight.copy_(weights.W_dec.T)
        module.decoder_linear.bias.copy_(weights.b_dec)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


def write_gemma_scope(path: Path, weights: Weights, **overrides: np.ndarray) -> Path:
    arrays = {
        "W_enc": weights.W_enc.numpy(),
        "W_dec": weights.W_dec.numpy(),
        "b_enc": weights.b_enc.numpy(),
        "b_dec": weights.b_dec.numpy(),
        "threshold": weights.threshold.numpy(),
    } | overrides
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        np.savez(
            stream, **{name: np.asarray(array, dtype=np.float32) for name, array in arrays.items()}
        )
    return path


def write_gemma_scope_2(directory: Path, weights: Weights, config: dict | None = None) -> Path:
    """`directory`/params.safetensors (and config.json when given); returns the weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")  # stored lowercase: w_enc, ...
    tensors = {name.lower(): getattr(weights, name).contiguous() for name in names}
    save_file(tensors, directory / "params.safetensors")
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory / "params.safetensors"


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for path_in_repo, source in files.items():
        target = repo / "snapshots" / commit / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return repo
