"""Generation: every reply under way decoded together, one batched forward pass per token.

Each request's generation is a generator run by the inference worker (see worker.py): it asks for
forward passes (Batched work), is sent their logits, and yields its text. The worker hands each
round's work to `run_batch`, which decodes the running generations in one padded batch (see
batching.py) and prefills the newcomers in another; sampling, stop strings and the token budget
stay each request's own.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from server.engine.batching import PaddedBatch, prefill_inputs, row_cache
from server.engine.controller import SteeringPlan
from server.engine.decoding import IncrementalDetokenizer, StopMatcher, sample_next_token
from server.engine.hooked_model import HookedModel
from server.engine.steering import BatchSteering, PassFactory, SteeringPass
from server.engine.worker import Batched

DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class SamplingParams:
    """How one reply is sampled.

    Defaults match the bot's SamplingOptions and the wire's ChatCompletionRequest
    (temperature 0.7, top_p 0.9).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class Finish:
    reason: Literal["stop", "length", "abort"]
    events: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class _Prefill:
    """A new generation's first forward pass, over its whole prompt."""

    steering: SteeringPass
    prompt: list[int]


@dataclass(frozen=True)
class _Decode:
    """One more token for a running generation (its row of the batch is keyed by `steering`)."""

    steering: SteeringPass
    token: int


class BatchedGeneration:
    def __init__(
        self, hooked: HookedModel, tokenizer: Any, context_length: int, new_pass: PassFactory
    ) -> None:
        self._hooked = hooked
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._new_pass = new_pass
        self._batch: PaddedBatch[SteeringPass] = PaddedBatch(hooked.device)

    def steps(
        self, prompt: list[int], sampling: SamplingParams, plan: SteeringPlan
    ) -> Generator[Batched | TextChunk | Finish, torch.Tensor, None]:
        """One request's generation, for the worker to stream: asks for forward passes
        (Batched work), is sent their logits, and yields its text, then one Finish."""
        steering = self._new_pass(plan, watch_from=len(prompt))
        generator = torch.Generator(device=self._hooked.device)
        generator.manual_seed(
            sampling.seed % 2**64 if sampling.seed is not None else generator.seed()
        )
        detokenizer = IncrementalDetokenizer(self._tokenizer)
        stops = StopMatcher(sampling.stop)
        stop_ids = stop_token_ids(
            self._tokenizer, self._hooked.model.generation_config, sampling.stop
        )
        budget = min(sampling.max_tokens, self._context_length - len(prompt))
        work: _Prefill | _Decode = _Prefill(steering, prompt)
        ready: tuple[TextChunk, ...] = ()
        produced = 0
        reason: Literal["stop", "length", "abort"] = "length"
        while produced < budget:
            logits = yield Batched(work, ready)
            ready = ()
            if steering.events:
                reason = "abort"
                break
            token = sample_next_token(
                logits, temperature=sampling.temperature, top_p=sampling.top_p, generator=generator
            )
            produced += 1
            if token in stop_ids:
                reason = "stop"
                break
            if text := stops.push(detokenizer.push(token)):
                ready = (TextChunk(text),)
            if stops.stopped:
                reason = "stop"
                break
            work = _Decode(steering, token)
        yield from ready
        if tail := stops.flush():
            yield TextChunk(tail)
        yield Finish(reason, tuple(steering.events), len(prompt), produced)

    def run_batch(self, works: list[_Prefill | _Decode]) -> list[torch.Tensor | Exception]:
        """One round of generation: the next-token logits of every running generation from one
        batched forward pass, then the newcomers' from another over all their prompts (after
        which they join the batch).

        Generations that asked for no decode this round have ended and leave the batch.
        """
        decodes = [work for work in works if isinstance(work, _Decode)]
        prefills = [work for work in works if isinstance(work, _Prefill)]
        self._batch.keep([work.steering for work in decodes])
        decoded = iter(self._decode_step([work.token for work in decodes]) if decodes else ())
        prefilled = iter(self._prefill(prefills) if prefills else ())
        return [next(decoded if isinstance(work, _Decode) else prefilled) for work in works]

    def _decode_step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per batch row; the next-token logits, [rows, vocab]."""
        inputs, steering = self._batch.inputs(tokens), BatchSteering(self._batch.rows)
        try:
            logits = self._hooked.extend(self._batch.cache, inputs, steering)
        except Exception:
            self._batch.clear()  # the cache may hold the failed step in some layers
            raise
        self._batch.advance()
        return logits

    def _prefill(self, works: list[_Prefill]) -> Sequence[torch.Tensor | Exception]:
        """The first next-token logits of new generations; their caches then join the batch."""
        inputs, mask = prefill_inputs([work.prompt for work in works], self._hooked.device)
        passes = [work.steering for work in works]
        steering = BatchSteering(passes, padding=(~mask).sum(dim=1).tolist())
        cache = row_cache()
        try:
            logits = self._hooked.extend(cache, inputs, steering)
        except Exception as error:  # fails these generations only
            return [error] * len(works)
        self._batch.join(passes, cache, mask)
        return list(logits)


def stop_token_ids(tokenizer: Any, generation_config: Any, stop: Sequence[str]) -> set[int]:
    """Tokens that end a reply: end-of-sequence (the tokenizer's and the model's generation
    config's), and stop strings that are single tokens."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    vocabulary = tokenizer.get_vocab()
    ids.update(vocabulary[text] for text in stop if text in vocabulary)
    return {token_id for token_id in ids if token_id is not None}
