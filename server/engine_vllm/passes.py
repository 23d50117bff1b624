"""Forward passes on vLLM for the readouts, and steering plans as vllm-lens steering vectors.

`Readouts` (server/engine/readouts.py) runs its reads on a thread and asks its model for two
passes: `run_to_layer` (the residual stream at the hooked layer, which the request's
SteeringPass encodes with the SAE) and `next_token_logits`. `LayerPasses` answers both from
vLLM: the residual stream is captured by vllm-lens, and a plan's change to it becomes a
steering vector added at the hooked layer, one vector for a plan of nudges or one per position
for pins, multipliers and conditional scopes over the prompt.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import torch

from server.engine.steering import SteeringPass

T = TypeVar("T")

# Runs one request on the engine and returns its final output (see VllmEngine.run_once).
RunOnce = Callable[[list[int], dict[str, Any]], Awaitable[Any]]


def steering_vectors(
    layer: int, nudge: torch.Tensor | None, per_position: torch.Tensor | None = None
) -> list[Any]:
    """vllm-lens steering vectors adding `nudge` ([d_in]) at every position, or
    `per_position` ([tokens, d_in]) at positions 0.. of the prompt, after decoder `layer`."""
    from vllm_lens import SteeringVector

    if nudge is not None:
        added = nudge[None]  # [1 layer, d_in]: every position
    elif per_position is not None:
        added = per_position[None]  # [1 layer, tokens, d_in]
    else:
        return []
    return [SteeringVector(activations=added.float().cpu(), layer_indices=[layer])]


class LayerPasses:
    """The two passes Readouts needs, each run on vLLM from a readout thread (blocking it,
    never the event loop)."""

    def __init__(
        self,
        run_once: RunOnce,
        loop: asyncio.AbstractEventLoop,
        layer: int,
        vocabulary_size: int,
        device: torch.device,
    ) -> None:
        self._run_once = run_once
        self._loop = loop
        self._layer = layer
        self._vocabulary_size = vocabulary_size
        self.device = device

    def run_to_layer(self, prompt: list[int], steering: SteeringPass) -> None:
        """The residual stream at the hooked layer through `steering` (which records it and,
        when asked, the SAE features after its plan)."""
        steering(self.residual(prompt))

    def residual(self, prompt: list[int]) -> torch.Tensor:
        """The hooked layer's output over `prompt`, unsteered: [1, tokens, d_in]."""
        options = {"max_tokens": 1, "extra_args": {"output_residual_stream": [self._layer]}}
        output = self._wait(self._run_once(prompt, options))
        captured = output.activations["residual_stream"][0, : len(prompt)]
        return captured.to(self.device)[None]

    def next_token_logits(self, prompt: list[int], steering: SteeringPass) -> torch.Tensor:
        """The next-token logits ([vocab]) after `prompt`, steered by `steering`'s plan."""
        if steering.plan.is_empty:
            vectors = []
        elif steering.nudge is not None:
            vectors = steering_vectors(self._layer, steering.nudge)
        else:  # pins, multipliers, scopes: the change they make at each prompt position
            residual = self.residual(prompt)
            change = (steering(residual) - residual)[0]
            vectors = steering_vectors(self._layer, None, per_position=change)
        extra = {"apply_steering_vectors": vectors} if vectors else {}
        options = {"max_tokens": 1, "logprobs": -1, "extra_args": extra}
        output = self._wait(self._run_once(prompt, options))
        logits = torch.full((self._vocabulary_size,), -torch.inf)
        for token_id, entry in output.outputs[0].logprobs[0].items():
            logits[token_id] = entry.logprob  # raw logits: see VllmOptions.engine_arguments
        return logits.to(self.device)

    def _wait(self, work: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(work), self._loop).result()


async def _awaited(work: Awaitable[T]) -> T:
    return await work


def request_id() -> str:
    return f"ember-{uuid.uuid4().hex}"
