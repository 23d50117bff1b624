"""What the API layer asks of an inference engine, whichever one runs the model.

Two engines implement it: `Runtime` (runtime.py: our own batching loop over Hugging Face
transformers, the default) and `VllmEngine` (server/engine_vllm: vLLM's async engine with
vllm-lens for per-request steering vectors and residual capture). An engine that cannot serve
a request as asked raises `UnsupportedByEngine`, which the API answers with a 4xx naming the
engine and the feature; nothing is ever silently left out.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from server.engine.controller import SteeringPlan
from server.engine.generation import Finish, SamplingParams, TextChunk
from server.engine.prompts import Purpose
from server.engine.readouts import Aggregate, FeatureAttribution, TokenActivations


class UnsupportedByEngine(ValueError):
    """A request needs a feature that the serving engine does not have."""

    def __init__(self, engine: str, feature: str, hint: str = "") -> None:
        self.engine = engine
        self.feature = feature
        advice = hint or "serve with --engine transformers for it"
        super().__init__(f"The {engine} engine does not support {feature}; {advice}.")


class Engine(Protocol):
    """Every model-backed operation of the API. Readouts are coroutines; `generate` streams."""

    name: str  # "transformers" or "vllm": doctor, /health and the start-up line show it

    @property
    def d_sae(self) -> int: ...

    async def start(self) -> None:
        """Called once on the serving event loop before the first request."""

    def close(self) -> None: ...

    def encode_chat(self, messages: Sequence[dict[str, str]], purpose: Purpose) -> list[int]: ...

    def token_strings(self, ids: Sequence[int]) -> list[str]: ...

    def generate(
        self, prompt: list[int], sampling: SamplingParams, plan: SteeringPlan
    ) -> AsyncGenerator[TextChunk | Finish, None]: ...

    async def inspect(
        self,
        prompt: list[int],
        plan: SteeringPlan,
        aggregate_by: Aggregate,
        include: Sequence[int] | None,
    ) -> list[TokenActivations]: ...

    async def logits(
        self, prompt: list[int], plan: SteeringPlan, top_k: int, vocabulary: Sequence[str] | None
    ) -> dict[str, float]: ...

    async def contrast(
        self, dataset_1: list[list[int]], dataset_2: list[list[int]], k_1: int, k_2: int
    ) -> tuple[list[int], list[int]]: ...

    async def neighbors(self, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]: ...

    async def attribute(
        self, prompt: list[int], start: int, end: int, top_k: int
    ) -> list[FeatureAttribution]: ...
