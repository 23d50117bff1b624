"""The causal LM with a forward hook on the SAE's layer, and the forward passes that steer there."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from server.engine.steering import Steering
from server.model.loading import decoder_layers


class _StopForward(Exception):
    """Raised by the hook to skip the layers after the SAE when only activations are needed."""


class HookedModel:
    """`model` with a hook on decoder layer `layer` that applies the steering of the forward pass
    under way on the calling thread (none outside `steered`).

    Inputs go to `device`, the embedding's; logits come back there too, wherever the LM head is
    (a model spread over several GPUs ends on another one).
    """

    def __init__(self, model: PreTrainedModel, layer: int) -> None:
        self.model = model
        # The embedding's device, not the first parameter's: multimodal models (Gemma 3) list a
        # vision tower first, which a device map may place elsewhere.
        embedding = model.get_input_embeddings()
        self.device: torch.device = next(embedding.parameters()).device
        self._local = threading.local()
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field).
        parameters = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._hook = decoder_layers(model)[layer].register_forward_hook(self._on_layer)

    def close(self) -> None:
        self._hook.remove()

    @contextmanager
    def steered(self, steering: Steering) -> Iterator[None]:
        """Apply `steering` at the hooked layer in the forward passes run inside this block."""
        self._local.steering = steering
        try:
            yield
        finally:
            self._local.steering = None

    def run_to_layer(self, prompt: list[int], steering: Steering) -> None:
        """A forward pass over `prompt` that stops after the hooked layer (`steering` must ask
        for that) and leaves what it saw in `steering`."""
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode(), self.steered(steering), suppress(_StopForward):
            self.model(input_ids=ids, use_cache=False)

    def next_token_logits(self, prompt: list[int], steering: Steering) -> torch.Tensor:
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode(), self.steered(steering):
            output = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return output.logits[0, -1].to(self.device)

    def extend(
        self, cache: DynamicCache, inputs: dict[str, torch.Tensor], steering: Steering
    ) -> torch.Tensor:
        """Run `inputs` through the model, adding them to `cache`; each row's next-token
        logits ([rows, vocab])."""
        with torch.inference_mode(), self.steered(steering):
            output = self.model(
                **inputs, **{self._cache_name: cache}, use_cache=True, logits_to_keep=1
            )
        return output.logits[:, -1].to(self.device)

    def _on_layer(self, _module: Any, _args: Any, output: Any) -> Any:
        steering: Steering | None = getattr(self._local, "steering", None)
        if steering is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if steering.track_gradient:
            hidden = hidden.detach().requires_grad_()
        steered = steering(hidden)
        if steering.stop_after_layer:
            raise _StopForward
        return (steered, *output[1:]) if isinstance(output, tuple) else steered
