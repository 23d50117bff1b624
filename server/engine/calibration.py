"""The size of a steering unit: how far a value of 1 moves a feature (see steering.py)."""

from __future__ import annotations

import torch

from server.engine.controller import EMPTY_PLAN
from server.engine.hooked_model import HookedModel
from server.engine.prompts import ChatPrompts
from server.engine.steering import SteeringPass
from server.model.sae import SparseAutoencoder

STEERING_STRENGTH = 0.5
CALIBRATION_PROMPTS = (
    "Hello! How are you today?",
    "Explain in two sentences how a bicycle stays upright.",
    "Write a short poem about the sea at night.",
    "What is the capital of France, and why is it famous?",
)


def measure_residual_norm(
    hooked: HookedModel, prompts: ChatPrompts, sae: SparseAutoencoder, decoder_norms: torch.Tensor
) -> float:
    """Median residual-stream norm at the hooked layer over CALIBRATION_PROMPTS."""
    norms = []
    for prompt in CALIBRATION_PROMPTS:
        ids = prompts.encode([{"role": "user", "content": prompt}], "generate")
        # An empty plan never reads the scale, which is what is being calibrated.
        steering = SteeringPass(
            sae, decoder_norms, EMPTY_PLAN, watch_from=len(ids), stop_after_layer=True
        )
        hooked.run_to_layer(ids, steering)
        assert steering.residual is not None
        norms.append(steering.residual[0])
    return median_residual_norm(norms)


def median_residual_norm(residuals: list[torch.Tensor]) -> float:
    """The median L2 norm of the positions of `residuals` (each [tokens, d_in]), first
    positions excluded: an attention sink with an outsized norm."""
    return float(torch.cat([r[1:].float().norm(dim=-1) for r in residuals]).median())
