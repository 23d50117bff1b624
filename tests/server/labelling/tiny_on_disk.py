"""The tiny model written to disk with an SAE in SAELens format, for `--model/--sae` runs: its
planted and word-group features as built, plus `RANDOM_FEATURES` whose encoder directions are
random, each firing on the 3% of the corpus' tokens it aligns with best (a scattered, meaningless
feature of the kind real SAEs have too)."""

from __future__ import annotations

from pathlib import Path

import torch

from server.model.tiny.build import build_tiny_parts
from tests.support.sae_formats import Weights, write_saelens

RANDOM_FEATURES = [1, 2, 3, 4, 5, 6, 7, 8]
FIRING_SHARE = 0.03


def write_tiny(directory: Path, corpus: Path) -> tuple[Path, Path]:
    """(model folder, SAE folder)."""
    parts = build_tiny_parts()
    model_dir, sae_dir = directory / "model", directory / "sae"
    parts.model.save_pretrained(model_dir)
    parts.tokenizer.save_pretrained(model_dir)
    sae = parts.sae
    W_enc, b_enc = sae.W_enc.detach().clone(), sae.b_enc.detach().clone()
    residual = _residual(parts, corpus.read_text(encoding="utf-8"))
    generator = torch.Generator().manual_seed(5)
    for index in RANDOM_FEATURES:
        direction = torch.randn(W_enc.shape[0], generator=generator)
        direction = 8.0 * direction / direction.norm()
        W_enc[:, index] = direction
        b_enc[index] = -torch.quantile(residual @ direction, 1 - FIRING_SHARE)
    weights = Weights(W_enc, b_enc, sae.W_dec.detach(), sae.b_dec.detach(), torch.zeros(0))
    write_saelens(sae_dir, weights, hook_name=f"blocks.{parts.layer}.hook_resid_post")
    return model_dir, sae_dir


def _residual(parts: object, text: str) -> torch.Tensor:
    model, tokenizer, layer = parts.model, parts.tokenizer, parts.layer  # type: ignore[attr-defined]
    captured: list[torch.Tensor] = []
    hook = model.model.layers[layer].register_forward_hook(
        lambda _module, _args, output: captured.append(
            output[0] if isinstance(output, tuple) else output
        )
    )
    try:
        with torch.no_grad():
            for paragraph in text.split("\n\n"):
                model(**tokenizer(paragraph, return_tensors="pt"))
    finally:
        hook.remove()
    return torch.cat([hidden[0] for hidden in captured])
