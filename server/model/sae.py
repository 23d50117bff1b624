"""Sparse autoencoders over a model's residual stream.

`load_sae` reads the formats people publish (SAELens, Goodfire, Gemma Scope, Gemma Scope 2; see
server/model/sae_formats.py), from a local path or `hf:<owner>/<repo>/<path in repo>` (fetched
with huggingface_hub).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from server.model.hub import download
from server.model.sae_formats import Activation, read_sae

__all__ = ["Activation", "SparseAutoencoder", "load_sae"]


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
    """Load an SAE from a SAELens directory, a Goodfire `.pt`/`.pth`, a Gemma Scope `.npz`, a
    Gemma Scope 2 `params.safetensors`, or `hf:<owner>/<repo>[/<path in repo>]` (any of those,
    downloaded from the Hugging Face Hub)."""
    path = download(source) if source.startswith("hf:") else Path(source)
    parts = read_sae(path)
    sae = SparseAutoencoder(
        parts.W_enc,
        parts.b_enc,
        parts.W_dec,
        parts.b_dec,
        activation=parts.activation,
        threshold=parts.threshold,
        k=parts.k,
        apply_b_dec_to_input=parts.apply_b_dec_to_input,
        hook_layer=parts.hook_layer,
    )
    return sae.to(device=device, dtype=dtype)
