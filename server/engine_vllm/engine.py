"""The vLLM engine: vLLM's async engine runs the model, vllm-lens steers it per request.

Every generation is one vLLM request in vLLM's continuous batch. A plan of nudges is exactly a
steering vector, `sum_i v_i * scale_i * W_dec[i]` added after the hooked layer at every position
(server/engine/steering.py has the units; the scale is calibrated here the same way, from
residual streams vllm-lens captures), so steered and unsteered requests share a batch and each
keeps its own steering. Readouts (compute-features, compute-logits, contrast, neighbours) are
our own code over captured residual streams and vLLM's raw logits (see passes.py).

Pins, multipliers and `set_when` scopes need the SAE at every decoding step: they run as a
per-request vllm-lens hook (hooks.py). What that cannot do (scopes that end the reply, per-token
steering on a top-k SAE) and what needs gradients (logit attribution) is refused with
UnsupportedByEngine: a 400 that names the engine and the feature.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar, cast

import torch

from server.engine.calibration import (
    CALIBRATION_PROMPTS,
    STEERING_STRENGTH,
    median_residual_norm,
)
from server.engine.controller import SteeringPlan
from server.engine.decoding import GREEDY_BELOW, IncrementalDetokenizer, StopMatcher
from server.engine.generation import Finish, SamplingParams, TextChunk, stop_token_ids
from server.engine.hooked_model import HookedModel
from server.engine.interface import UnsupportedByEngine
from server.engine.prompts import ChatPrompts, Purpose
from server.engine.readout_calls import readout
from server.engine.readouts import FeatureAttribution, Readouts
from server.engine.steering import SteeringPass
from server.engine_vllm.hooks import hook_problem, steering_hook
from server.engine_vllm.options import VllmOptions, prepare_environment
from server.engine_vllm.passes import LayerPasses, request_id, steering_vectors
from server.model.presets import ModelBundle

ENGINE_NAME = "vllm"
READER_THREADS = 8  # readouts waiting on vLLM at once (they batch there)

T = TypeVar("T")


class VllmEngine:
    name = ENGINE_NAME

    def __init__(
        self,
        bundle: ModelBundle,
        source: str,
        options: VllmOptions,
        *,
        strength: float = STEERING_STRENGTH,
    ) -> None:
        """`source`: what vLLM loads (hub id or folder); `bundle`: the rest (see loading.py)."""
        self.bundle = bundle
        self._source = source
        self._options = options
        self._strength = strength
        limit = int(getattr(bundle.model.config, "max_position_embeddings", 4096))
        self.context_length = min(limit, options.max_model_len or limit)
        self._prompts = ChatPrompts(bundle.tokenizer, self.context_length)
        self._decoder_norms = bundle.sae.W_dec.detach().norm(dim=1).clamp_min(1e-8)
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="ember-vllm-read")
        self._llm: Any = None
        self._readouts: Readouts | None = None
        self.residual_norm = 0.0
        self.scale = torch.zeros_like(self._decoder_norms)

    @property
    def d_sae(self) -> int:
        return int(self.bundle.sae.W_dec.shape[0])

    async def start(self) -> None:
        """Start vLLM (on this event loop, which serves its outputs) and calibrate steering."""
        prepare_environment(on_gpu=torch.cuda.is_available())
        import vllm_lens  # noqa: F401  # its vLLM plugin must be installed, not just vLLM
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        arguments = AsyncEngineArgs(**self._options.engine_arguments(self._source))
        self._llm = AsyncLLM.from_engine_args(arguments)
        passes = LayerPasses(
            self.run_once,
            asyncio.get_running_loop(),
            self.bundle.layer,
            self._llm.model_config.get_vocab_size(),
            self.bundle.sae.W_dec.device,
        )
        residuals = []
        for text in CALIBRATION_PROMPTS:
            ids = self._prompts.encode([{"role": "user", "content": text}], "generate")
            residual = await asyncio.get_running_loop().run_in_executor(
                self._readers, passes.residual, ids
            )
            residuals.append(residual[0])
        self.residual_norm = median_residual_norm(residuals)
        self.scale = (self._strength * self.residual_norm / self._decoder_norms).detach()
        # Readouts ask their model for run_to_layer and next_token_logits only (attribution,
        # which needs the model itself, is refused below), which LayerPasses answers.
        self._readouts = Readouts(
            cast(HookedModel, passes),
            self._prompts,
            self.bundle.sae,
            self._decoder_norms,
            new_pass=self._new_pass,
        )

    def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
        self._readers.shutdown(wait=False, cancel_futures=True)

    def encode_chat(self, messages: Sequence[dict[str, str]], purpose: Purpose) -> list[int]:
        return self._prompts.encode(messages, purpose)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return self._prompts.token_strings(ids)

    def generate(
        self, prompt: list[int], sampling: SamplingParams, plan: SteeringPlan
    ) -> AsyncGenerator[TextChunk | Finish, None]:
        """Stream the reply to `prompt` (as Runtime.generate does), batched by vLLM with every
        other request; refuses, before anything is sent, plans it cannot serve (hooks.py)."""
        if not plan.only_nudges and (problem := hook_problem(self.bundle.sae, plan)):
            raise UnsupportedByEngine(
                ENGINE_NAME,
                problem,
                "compute-features and compute-logits take them here; serve with "
                "--engine transformers to generate with them",
            )
        return self._generate(prompt, sampling, plan)

    async def _generate(
        self, prompt: list[int], sampling: SamplingParams, plan: SteeringPlan
    ) -> AsyncGenerator[TextChunk | Finish, None]:
        budget = min(sampling.max_tokens, self.context_length - len(prompt))
        options = {
            "max_tokens": budget,
            "temperature": 0.0 if sampling.temperature < GREEDY_BELOW else sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "ignore_eos": True,  # end-of-sequence and stop strings are ours, as in Runtime
            "extra_args": self._steering(plan, watch_from=len(prompt)),
        }
        stop_ids = stop_token_ids(
            self.bundle.tokenizer, self.bundle.model.generation_config, sampling.stop
        )
        detokenizer = IncrementalDetokenizer(self._prompts.tokenizer)
        stops = StopMatcher(sampling.stop)
        produced, reason = 0, cast(Literal["stop", "length"], "length")
        outputs = self._llm.generate(_tokens(prompt), _sampling(options, delta=True), request_id())
        try:
            async for output in outputs:
                for token in output.outputs[0].token_ids:
                    produced += 1
                    if token in stop_ids:
                        reason = "stop"
                        break
                    if text := stops.push(detokenizer.push(token)):
                        yield TextChunk(text)
                    if stops.stopped:
                        reason = "stop"
                        break
                if reason == "stop":
                    break
        finally:
            await outputs.aclose()  # aborts the request in vLLM if it is still running
        if tail := stops.flush():
            yield TextChunk(tail)
        yield Finish(reason, (), len(prompt), produced)

    def _steering(self, plan: SteeringPlan, watch_from: int) -> dict[str, Any]:
        """vllm-lens' extra arguments for `plan`: one steering vector for nudges alone, else a
        hook that runs the SAE at every step (see hooks.py)."""
        if plan.is_empty:
            return {}
        layer = self.bundle.layer
        if plan.only_nudges:
            nudge = self._new_pass(plan, watch_from=watch_from).nudge
            return {"apply_steering_vectors": steering_vectors(layer, nudge)}
        hook = steering_hook(self.bundle.sae, self.scale, plan, layer, watch_from)
        return {"apply_hooks": [hook]}

    async def run_once(self, prompt: list[int], options: dict[str, Any]) -> Any:
        """One greedy request to the end; its final output (with vllm-lens' captures)."""
        final = None
        params = _sampling({"temperature": 0.0, **options}, delta=False)
        async for output in self._llm.generate(_tokens(prompt), params, request_id()):
            final = output
        return final

    inspect = readout(Readouts.inspect)
    logits = readout(Readouts.logits)
    contrast = readout(Readouts.contrast)
    neighbors = readout(Readouts.neighbors)

    async def run_readout(self, call: Callable[[Readouts], T]) -> T:
        """Run `call` on a reader thread: its passes block that thread on vLLM, not the loop."""
        if self._readouts is None:
            raise RuntimeError("The vLLM engine has not started yet.")
        return await asyncio.get_running_loop().run_in_executor(self._readers, call, self._readouts)

    async def attribute(
        self, prompt: list[int], start: int, end: int, top_k: int
    ) -> list[FeatureAttribution]:
        raise UnsupportedByEngine(
            ENGINE_NAME,
            "logit attribution (it differentiates the logits through the model)",
        )

    def _new_pass(self, plan: SteeringPlan, **options: Any) -> SteeringPass:
        return SteeringPass(self.bundle.sae, self.scale, plan, **options)


def _tokens(prompt: list[int]) -> Any:
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=prompt)


def _sampling(options: dict[str, Any], *, delta: bool) -> Any:
    from vllm import SamplingParams as VllmSampling
    from vllm.sampling_params import RequestOutputKind

    kind = RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY
    return VllmSampling(detokenize=False, output_kind=kind, **options)
