"""The inference engine: one causal LM with an SAE on one layer's residual stream, and steering.

Every forward pass runs on one worker thread (worker.py), never on the event loop: generations
are streamed from it (generation.py), and the readouts (readouts.py) are awaited on it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, TypeVar

import torch

from server.engine.calibration import STEERING_STRENGTH, measure_residual_norm
from server.engine.controller import SteeringPlan
from server.engine.generation import BatchedGeneration, Finish, SamplingParams, TextChunk
from server.engine.hooked_model import HookedModel
from server.engine.prompts import ChatPrompts, Purpose
from server.engine.readout_calls import readout
from server.engine.readouts import Readouts
from server.engine.steering import SteeringPass
from server.engine.worker import InferenceWorker
from server.model.presets import ModelBundle

# On CPU, below this hidden size one intra-op thread beats several: the matrices are too small
# for the hand-off to pay, and spinning helpers collapse when the cores are shared (tiny preset,
# 2 cores: 1.4 vs 2.3 ms per decode step alone, 2.1 vs 7.8 ms for a batch of 8).
SINGLE_THREAD_BELOW_HIDDEN = 2048

T = TypeVar("T")


class Runtime:
    """Every model-backed operation of the API, run on one worker thread (the transformers
    engine; see interface.py)."""

    name = "transformers"

    def __init__(self, bundle: ModelBundle, *, strength: float = STEERING_STRENGTH) -> None:
        self.bundle = bundle
        model = bundle.model
        # Nothing here trains: frozen parameters keep autograd from recording the layers below
        # the hook when attribution differentiates with respect to the residual stream.
        model.requires_grad_(False)
        bundle.sae.requires_grad_(False)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 4096))
        self._prompts = ChatPrompts(bundle.tokenizer, self.context_length)
        self._hooked = HookedModel(model, bundle.layer)
        decoder_norms = bundle.sae.W_dec.detach().norm(dim=1).clamp_min(1e-8)
        self._generation = BatchedGeneration(
            self._hooked, bundle.tokenizer, self.context_length, new_pass=self._new_pass
        )
        threads = inference_threads(model)
        self._worker = InferenceWorker(
            run_batch=self._generation.run_batch,
            initializer=(lambda: torch.set_num_threads(threads)) if threads else None,
        )
        self.residual_norm = measure_residual_norm(
            self._hooked, self._prompts, bundle.sae, decoder_norms
        )
        self.scale = (strength * self.residual_norm / decoder_norms).detach()
        self._readouts = Readouts(
            self._hooked, self._prompts, bundle.sae, decoder_norms, new_pass=self._new_pass
        )

    @property
    def d_sae(self) -> int:
        return int(self.bundle.sae.W_dec.shape[0])

    async def start(self) -> None:
        """Nothing to start: the model was loaded and calibrated in __init__."""

    def close(self) -> None:
        self._worker.close()
        self._hooked.close()

    def encode_chat(self, messages: Sequence[dict[str, str]], purpose: Purpose) -> list[int]:
        """Token ids of `messages` through the chat template (see ChatPrompts.encode)."""
        return self._prompts.encode(messages, purpose)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return self._prompts.token_strings(ids)

    def generate(
        self, prompt: list[int], sampling: SamplingParams, plan: SteeringPlan
    ) -> AsyncGenerator[TextChunk | Finish, None]:
        """Stream the reply to `prompt`: text chunks, then one Finish.

        Its forward passes run batched with every other generation under way; sampling, stop
        strings and the token budget stay this request's own.
        """
        return self._worker.stream(self._generation.steps(prompt, sampling, plan))

    # The readouts, as coroutines that run them on the worker (see readouts.py).
    inspect = readout(Readouts.inspect)
    logits = readout(Readouts.logits)
    contrast = readout(Readouts.contrast)
    neighbors = readout(Readouts.neighbors)
    attribute = readout(Readouts.attribute)

    async def run_readout(self, call: Callable[[Readouts], T]) -> T:
        return await self._worker.call(functools.partial(call, self._readouts))

    def _new_pass(self, plan: SteeringPlan, **options: Any) -> SteeringPass:
        return SteeringPass(self.bundle.sae, self.scale, plan, **options)


def inference_threads(model: torch.nn.Module) -> int | None:
    """Torch intra-op threads for the inference thread: one for a small model on CPU, else None
    (torch's default, one per core)."""
    device = next(model.parameters()).device
    hidden = int(getattr(model.config, "hidden_size", SINGLE_THREAD_BELOW_HIDDEN))
    return 1 if device.type == "cpu" and hidden < SINGLE_THREAD_BELOW_HIDDEN else None
