"""The inference engine: one causal LM with an SAE on one layer's residual stream, and steering.

Steering units
--------------
A forward hook on decoder layer `bundle.layer` sees the residual stream `h` ([tokens, d_in]) that
the SAE reads. Interventions act on the SAE feature activations `a = sae.encode(h)` and reach the
model as the change they make to the SAE's output, so the SAE's reconstruction error is kept:

    h' = h + sum_i (a'_i - a_i) * W_dec[i]

with, for a value v on feature i:

    nudge  a'_i = a_i + v * scale_i      (adds v * scale_i * W_dec[i] at every position)
    pin    a'_i = v * scale_i            (v = 0 ablates the feature)
    mul    a'_i = a_i * v

    scale_i = STEERING_STRENGTH * residual_norm / ||W_dec[i]||

`residual_norm` is the median L2 norm of the residual stream at the hooked layer, measured at load
time over CALIBRATION_PROMPTS (first position excluded: it is an attention sink with an outsized
norm). So a nudge of +1 adds a vector half as long as a typical residual-stream vector: a strong
push that models still answer coherently through, as Ember's +-1 was; +-0.3 to 0.5 is gentle.

Conditional scopes (`set_when`, `abort_when`) compare feature activations in the SAE's own units
(the same numbers compute-features reports), after the interventions of the enclosing controller.
They are checked on every generated token (prompt tokens only count for compute-features and
compute-logits, where there is no generation). A scope switches on at the first token where its
condition holds and stays on for the rest of the request; a scope with an event name reports the
name and ends the generation there.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from jinja2.exceptions import TemplateError
from transformers import DynamicCache

from server.batching import PaddedBatch, prefill_inputs, row_cache
from server.controller import EMPTY_PLAN, Scope, SteeringPlan
from server.decoding import IncrementalDetokenizer, StopMatcher, sample_next_token
from server.presets import ModelBundle
from server.sae import SparseAutoencoder
from server.worker import Batched, InferenceWorker

STEERING_STRENGTH = 0.5
CALIBRATION_PROMPTS = (
    "Hello! How are you today?",
    "Explain in two sentences how a bicycle stays upright.",
    "Write a short poem about the sea at night.",
    "What is the capital of France, and why is it famous?",
)
REPORTED_FEATURES = 64
TOKEN_TEXTS_KEPT = 65536
DEFAULT_MAX_TOKENS = 512
# On CPU, below this hidden size one intra-op thread beats several: the matrices are too small
# for the hand-off to pay, and spinning helpers collapse when the cores are shared (tiny preset,
# 2 cores: 1.4 vs 2.3 ms per decode step alone, 2.1 vs 7.8 ms for a batch of 8).
SINGLE_THREAD_BELOW_HIDDEN = 2048

Aggregate = Literal["count", "mean", "max", "sum"]
Purpose = Literal["generate", "score", "read"]


class PromptError(ValueError):
    """The conversation cannot be fed to the model (template refused it, or it is too long)."""


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.6
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
class TokenActivations:
    token: str
    activations: list[tuple[int, float]]  # (feature index, activation), strongest first


@dataclass(frozen=True)
class FeatureAttribution:
    index: int
    value: float  # estimated drop of the target logits if the feature were ablated
    activations: list[tuple[int, float]]  # (token position, activation) where it is active


class _StopForward(Exception):
    """Raised by the hook to skip the layers after the SAE when only activations are needed."""


class _Steering(Protocol):
    """What the layer hook applies: one request's steering, or a batch's."""

    stop_after_layer: bool
    track_gradient: bool

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor: ...


class _SteeringPass:
    """One request's steering across its forward passes (prefill, then one pass per token).

    Called by the layer hook with the residual stream of the newest positions; keeps the
    position counter and which scopes have switched on. See the module docstring for the math.
    """

    def __init__(
        self,
        sae: SparseAutoencoder,
        scale: torch.Tensor,
        plan: SteeringPlan,
        *,
        watch_from: int,
        capture_features: bool = False,
        stop_after_layer: bool = False,
        track_gradient: bool = False,
    ) -> None:
        self._sae = sae
        self._scale = scale
        self.plan = plan
        self.watch_from = watch_from
        self.capture_features = capture_features
        self.stop_after_layer = stop_after_layer
        self.track_gradient = track_gradient
        self.position = 0
        self.events: list[str] = []
        self.residual: torch.Tensor | None = None
        self.features: torch.Tensor | None = None
        self._latched: set[tuple[int, ...]] = set()
        touched = sorted({edit.index for part in plan.walk() for edit in part.edits})
        self._touched = torch.tensor(touched, dtype=torch.long, device=scale.device)
        # The whole steering when the plan only nudges: one vector added at every position.
        self.nudge = self._constant_nudge() if plan.only_nudges and plan.edits else None
        self.reads_features = capture_features or not (plan.is_empty or self.nudge is not None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Steer `hidden` ([1, tokens, d_in]) and return the residual stream to continue with."""
        first, count = self.position, hidden.shape[1]
        self.position += count
        self.residual = hidden
        if not self.reads_features:
            return hidden if self.nudge is None else hidden + self.nudge.to(hidden.dtype)
        residual = hidden[0].to(self._sae.W_dec.dtype)
        activations = self._sae.encode(residual)
        edited = activations.clone() if len(self._touched) else activations
        everywhere = torch.ones(count, dtype=torch.bool, device=self._scale.device)
        watched = everywhere  # the common case: every position is a generated token
        if first < self.watch_from:
            watched = torch.arange(first, first + count, device=everywhere.device)
            watched = watched >= self.watch_from
        self._apply(self.plan, edited, everywhere, watched, ())
        if self.capture_features:
            self.features = edited
        if not len(self._touched):
            return hidden
        change = edited[:, self._touched] - activations[:, self._touched]
        delta = change @ self._sae.W_dec[self._touched]
        return hidden + delta.to(hidden.dtype).unsqueeze(0)

    def _apply(
        self,
        plan: SteeringPlan,
        features: torch.Tensor,
        active: torch.Tensor,
        watched: torch.Tensor,
        path: tuple[int, ...],
    ) -> None:
        for edit in plan.edits:
            current = features[:, edit.index]
            target = self._edited(edit.mode, edit.value, edit.index, current)
            features[:, edit.index] = torch.where(active, target, current)
        for number, scope in enumerate(plan.scopes):
            key = (*path, number)
            switched_on = self._switched_on(scope, key, features, active & watched)
            self._apply(scope.plan, features, switched_on, watched, key)

    def _edited(self, mode: str, value: float, index: int, current: torch.Tensor) -> torch.Tensor:
        scaled = value * float(self._scale[index])
        if mode == "nudge":
            return current + scaled
        if mode == "pin":
            return torch.full_like(current, scaled)
        return current * value

    def _switched_on(
        self, scope: Scope, key: tuple[int, ...], features: torch.Tensor, checked: torch.Tensor
    ) -> torch.Tensor:
        """Positions where `scope` is on: from the first checked position where it holds."""
        if key in self._latched:
            return torch.ones_like(checked)
        holds = scope.trigger.holds(lambda group: _group_activation(features, group))
        on = torch.cumsum(holds & checked, dim=0) > 0
        if bool(on.any()):
            self._latched.add(key)
            if scope.event_name:
                self.events.append(scope.event_name)
        return on

    def _constant_nudge(self) -> torch.Tensor:
        nudge = torch.zeros_like(self._sae.W_dec[0])
        for edit in self.plan.edits:
            nudge += edit.value * self._scale[edit.index] * self._sae.W_dec[edit.index]
        return nudge


class _BatchSteering:
    """Every row's own steering in one batched forward pass (hidden: [rows, tokens, d_in]).

    Nudges are added for all rows at once (a zero row for the others, which leaves them exactly
    as they were); rows whose steering reads SAE features go through their own _SteeringPass,
    without their left padding, so each row is steered exactly as it would be alone.
    """

    stop_after_layer = False
    track_gradient = False

    def __init__(self, passes: Sequence[_SteeringPass], padding: Sequence[int] = ()) -> None:
        """`padding`: each row's padding positions, on the left (none when not given)."""
        self._passes = passes
        self._padding = padding or [0] * len(passes)
        self._any_reading = any(steering.reads_features for steering in passes)
        nudges = [steering.nudge for steering in passes]
        self._nudges: torch.Tensor | None = None
        if any(nudge is not None for nudge in nudges):
            zero = torch.zeros_like(next(nudge for nudge in nudges if nudge is not None))
            self._nudges = torch.stack([zero if n is None else n for n in nudges]).unsqueeze(1)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._nudges is not None:
            steered = hidden + self._nudges.to(hidden.dtype)
        else:
            steered = hidden.clone() if self._any_reading else hidden
        for row, (steering, pad) in enumerate(zip(self._passes, self._padding, strict=True)):
            if steering.reads_features:
                steered[row : row + 1, pad:] = steering(hidden[row : row + 1, pad:])
            else:
                steering.position += hidden.shape[1] - pad
        return steered


@dataclass(frozen=True)
class _Prefill:
    """A new generation's first forward pass, over its whole prompt."""

    steering: _SteeringPass
    prompt: list[int]


@dataclass(frozen=True)
class _Decode:
    """One more token for a running generation (its row of the batch is keyed by `steering`)."""

    steering: _SteeringPass
    token: int


class Runtime:
    """Every model-backed operation of the API, run on one worker thread."""

    def __init__(self, bundle: ModelBundle, *, strength: float = STEERING_STRENGTH) -> None:
        self.bundle = bundle
        # Any: transformers types its results as unions over every return mode.
        self.tokenizer: Any = bundle.tokenizer
        self.model = bundle.model
        self.device = next(self.model.parameters()).device
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 4096))
        self._local = threading.local()
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field).
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._hook = self.model.model.layers[bundle.layer].register_forward_hook(self._on_layer)
        self._decoder_norms = bundle.sae.W_dec.detach().norm(dim=1).clamp_min(1e-8)
        self._special_ids = set(self.tokenizer.all_special_ids)
        # Reports name every token of a conversation; the tokenizer's decode is slow per call.
        self._token_text = functools.lru_cache(maxsize=TOKEN_TEXTS_KEPT)(self._decode_token)
        self._batch: PaddedBatch[_SteeringPass] = PaddedBatch(self.device)
        threads = inference_threads(self.model)
        self._worker = InferenceWorker(
            run_batch=self._run_batch,
            initializer=(lambda: torch.set_num_threads(threads)) if threads else None,
        )
        self.residual_norm = self._measure_residual_norm()
        self.scale = (strength * self.residual_norm / self._decoder_norms).detach()

    @property
    def d_sae(self) -> int:
        return int(self.bundle.sae.W_dec.shape[0])

    def close(self) -> None:
        self._worker.close()
        self._hook.remove()

    # ---- prompts -------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[dict[str, str]], purpose: Purpose) -> list[int]:
        """Token ids of `messages` through the chat template.

        `generate` opens a new assistant turn; `score` continues a final assistant message (or
        opens a turn after a user message) so the next-token logits are the reply's; `read` is
        the conversation as it stands.
        """
        text = self._render(list(messages), purpose)
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if len(ids) >= self.context_length:
            raise PromptError(
                f"The conversation is {len(ids)} tokens; this model reads at most "
                f"{self.context_length - 1}. Shorten it or start a new one."
            )
        return ids

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._token_text(token_id) for token_id in ids]

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _render(self, messages: list[dict[str, str]], purpose: Purpose) -> str:
        ends_with_reply = messages[-1]["role"] == "assistant"
        options = {
            "add_generation_prompt": purpose == "generate"
            or (purpose == "score" and not ends_with_reply),
            "continue_final_message": purpose == "score" and ends_with_reply,
        }
        try:
            return self._apply_template(messages, options)
        except TemplateError as error:
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise PromptError(f"The model's chat template refused this: {error}") from error
            # Some templates (Gemma's) have no system role: fold it into the first turn.
            merged = {
                **messages[1],
                "content": f"{messages[0]['content']}\n\n{messages[1]['content']}",
            }
            return self._render([merged, *messages[2:]], purpose)

    def _apply_template(self, messages: list[dict[str, str]], options: dict[str, bool]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **options)
        except ValueError:
            if not options["continue_final_message"]:
                raise
            # The template reshapes the final message, so it cannot be continued in place.
            return self.tokenizer.apply_chat_template(messages, tokenize=False)

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self, prompt: list[int], options: SamplingOptions, plan: SteeringPlan
    ) -> AsyncGenerator[TextChunk | Finish, None]:
        """Stream the reply to `prompt`: text chunks, then one Finish.

        Its forward passes run batched with every other generation under way (see _run_batch);
        sampling, stop strings and the token budget stay this request's own.
        """
        return self._worker.stream(self._generation_steps(prompt, options, plan))

    def _generation_steps(
        self, prompt: list[int], options: SamplingOptions, plan: SteeringPlan
    ) -> Generator[Batched | TextChunk | Finish, torch.Tensor, None]:
        """One request's generation: asks the worker for forward passes (Batched work), is
        sent their logits, and yields its text."""
        steering = self._pass(plan, watch_from=len(prompt))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(
            options.seed % 2**64 if options.seed is not None else generator.seed()
        )
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopMatcher(options.stop)
        stop_ids = self._stop_token_ids(options.stop)
        budget = min(options.max_tokens, self.context_length - len(prompt))
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
                logits, temperature=options.temperature, top_p=options.top_p, generator=generator
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

    def _run_batch(self, works: list[_Prefill | _Decode]) -> list[torch.Tensor | Exception]:
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
        inputs, steering = self._batch.inputs(tokens), _BatchSteering(self._batch.rows)
        try:
            logits = self._extend(self._batch.cache, inputs, steering)
        except Exception:
            self._batch.clear()  # the cache may hold the failed step in some layers
            raise
        self._batch.advance()
        return logits

    def _prefill(self, works: list[_Prefill]) -> Sequence[torch.Tensor | Exception]:
        """The first next-token logits of new generations; their caches then join the batch."""
        inputs, mask = prefill_inputs([work.prompt for work in works], self.device)
        passes = [work.steering for work in works]
        steering = _BatchSteering(passes, padding=(~mask).sum(dim=1).tolist())
        cache = row_cache()
        try:
            logits = self._extend(cache, inputs, steering)
        except Exception as error:  # fails these generations only
            return [error] * len(works)
        self._batch.join(passes, cache, mask)
        return list(logits)

    def _extend(
        self, cache: DynamicCache, inputs: dict[str, torch.Tensor], steering: _Steering
    ) -> torch.Tensor:
        """Run `inputs` through the model, adding them to `cache`; each row's next-token
        logits ([rows, vocab])."""
        with torch.inference_mode(), self._steering(steering):
            output = self.model(
                **inputs, **{self._cache_name: cache}, use_cache=True, logits_to_keep=1
            )
        return output.logits[:, -1]

    def _stop_token_ids(self, stop: Sequence[str]) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        vocabulary = self.tokenizer.get_vocab()
        ids.update(vocabulary[text] for text in stop if text in vocabulary)
        return {token_id for token_id in ids if token_id is not None}

    # ---- reading the model ---------------------------------------------------------------

    async def inspect(
        self,
        prompt: list[int],
        plan: SteeringPlan,
        aggregate_by: Aggregate,
        include: Sequence[int] | None,
    ) -> list[TokenActivations]:
        """Per-token activations of the features that matter for this conversation.

        The features reported are `include` when given, else the REPORTED_FEATURES with the
        highest `aggregate_by` over the conversation's non-special tokens.
        """
        return await self._worker.call(lambda: self._inspect(prompt, plan, aggregate_by, include))

    def _inspect(
        self,
        prompt: list[int],
        plan: SteeringPlan,
        aggregate_by: Aggregate,
        include: Sequence[int] | None,
    ) -> list[TokenActivations]:
        features = self._features(prompt, plan)
        if include is None:
            chosen = self._strongest(features[self._content_positions(prompt)], aggregate_by)
        else:
            chosen = torch.tensor(sorted(set(include)), dtype=torch.long, device=features.device)
        # Each token's activations strongest first (ties in feature order): only the active
        # ones, unless the features were asked for by name.
        values, order = features[:, chosen].sort(dim=1, descending=True, stable=True)
        named = [len(chosen)] * len(prompt)
        shown = (values > 0).sum(dim=1).tolist() if include is None else named
        width = max(shown, default=0)
        rows = zip(chosen[order[:, :width]].tolist(), values[:, :width].tolist(), strict=True)
        return [
            TokenActivations(token, list(zip(indices[:count], row[:count], strict=True)))
            for token, (indices, row), count in zip(
                self.token_strings(prompt), rows, shown, strict=True
            )
        ]

    async def logits(
        self, prompt: list[int], plan: SteeringPlan, top_k: int, vocabulary: Sequence[str] | None
    ) -> dict[str, float]:
        """The `top_k` next-token logits, keyed by token text (or by the strings asked for)."""
        return await self._worker.call(lambda: self._logits(prompt, plan, top_k, vocabulary))

    def _logits(
        self, prompt: list[int], plan: SteeringPlan, top_k: int, vocabulary: Sequence[str] | None
    ) -> dict[str, float]:
        logits = self._next_token_logits(prompt, self._pass(plan, watch_from=0))
        if vocabulary is not None:
            candidates = {text: self._first_token(text) for text in vocabulary}
            scored = [(float(logits[i]), text) for text, i in candidates.items() if i is not None]
            return {text: value for value, text in sorted(scored, reverse=True)[:top_k]}
        values, ids = torch.topk(logits.float(), min(top_k, logits.shape[-1]))
        result: dict[str, float] = {}
        for value, token in zip(values.tolist(), self.token_strings(ids.tolist()), strict=True):
            result.setdefault(token, value)
        return result

    def _first_token(self, text: str) -> int | None:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return ids[0] if ids else None

    async def contrast(
        self, dataset_1: list[list[int]], dataset_2: list[list[int]], k_1: int, k_2: int
    ) -> tuple[list[int], list[int]]:
        """Features whose mean activation is higher in dataset 1 (top k_1) and in 2 (top k_2)."""
        return await self._worker.call(lambda: self._contrast(dataset_1, dataset_2, k_1, k_2))

    def _contrast(
        self, dataset_1: list[list[int]], dataset_2: list[list[int]], k_1: int, k_2: int
    ) -> tuple[list[int], list[int]]:
        difference = self._mean_features(dataset_2) - self._mean_features(dataset_1)
        toward_1, toward_2 = _top_positive(-difference, k_1), _top_positive(difference, k_2)
        return toward_1.tolist(), toward_2.tolist()

    def _mean_features(self, prompts: list[list[int]]) -> torch.Tensor:
        means = [
            self._features(prompt, EMPTY_PLAN)[self._content_positions(prompt)].mean(dim=0)
            for prompt in prompts
        ]
        return torch.stack(means).mean(dim=0)

    async def neighbors(self, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]:
        """Features whose decoder directions are closest (cosine) to the mean of `indices`'."""
        return await self._worker.call(lambda: self._neighbors(indices, top_k))

    def _neighbors(self, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]:
        decoder = self.bundle.sae.W_dec.detach()
        query_rows = torch.tensor(list(indices), dtype=torch.long, device=decoder.device)
        direction = (decoder[query_rows] / self._decoder_norms[query_rows, None]).mean(dim=0)
        cosine = (decoder @ direction) / (self._decoder_norms * direction.norm().clamp_min(1e-8))
        cosine[query_rows] = -torch.inf
        values, found = torch.topk(cosine, min(top_k, self.d_sae - len(set(indices))))
        return list(zip(found.tolist(), values.tolist(), strict=True))

    async def attribute(
        self, prompt: list[int], start: int, end: int, top_k: int
    ) -> list[FeatureAttribution]:
        """Features whose activations most raise the logits of tokens start..end of `prompt`.

        Linear estimate (gradient times activation) of how much the target tokens' logits would
        drop if each feature were ablated at every earlier position.
        """
        return await self._worker.call(lambda: self._attribute(prompt, start, end, top_k))

    def _attribute(
        self, prompt: list[int], start: int, end: int, top_k: int
    ) -> list[FeatureAttribution]:
        residual, target = self._residual_gradient(prompt, start, end)
        with torch.inference_mode():
            features = self.bundle.sae.encode(residual.to(self.bundle.sae.W_dec.dtype))
            effect = features * (target.to(features.dtype) @ self.bundle.sae.W_dec.T)
            totals = effect.sum(dim=0)
            values, found = torch.topk(totals, min(top_k, self.d_sae))
        attributions = []
        for index, value in zip(found.tolist(), values.tolist(), strict=True):
            column = features[:, index]
            active = torch.nonzero(column > 0).flatten().tolist()
            pairs = [(position, float(column[position])) for position in active]
            attributions.append(FeatureAttribution(index, value, pairs))
        return attributions

    def _residual_gradient(
        self, prompt: list[int], start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hooked residual stream and the gradient of the target logits with respect to it."""
        steering = self._pass(EMPTY_PLAN, watch_from=len(prompt), track_gradient=True)
        ids = torch.tensor([prompt], device=self.device)
        with torch.enable_grad(), self._steering(steering):
            logits = self.model(input_ids=ids, use_cache=False).logits[0]
            targets = torch.arange(start, end + 1, device=self.device)
            score = logits[targets - 1, ids[0, targets]].sum()
            assert steering.residual is not None
            (gradient,) = torch.autograd.grad(score, steering.residual)
        return steering.residual[0].detach(), gradient[0]

    # ---- forward passes ------------------------------------------------------------------

    def _next_token_logits(self, prompt: list[int], steering: _SteeringPass) -> torch.Tensor:
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode(), self._steering(steering):
            output = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return output.logits[0, -1]

    def _features(self, prompt: list[int], plan: SteeringPlan) -> torch.Tensor:
        """SAE activations ([tokens, d_sae]) at the hooked layer, after `plan`'s steering."""
        steering = self._pass(plan, watch_from=0, capture_features=True, stop_after_layer=True)
        self._run_to_layer(prompt, steering)
        assert steering.features is not None
        return steering.features

    def _run_to_layer(self, prompt: list[int], steering: _SteeringPass) -> None:
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode(), self._steering(steering), suppress(_StopForward):
            self.model(input_ids=ids, use_cache=False)

    def _pass(self, plan: SteeringPlan, **options: Any) -> _SteeringPass:
        return _SteeringPass(self.bundle.sae, self.scale, plan, **options)

    def _content_positions(self, prompt: list[int]) -> torch.Tensor:
        """Positions of ordinary tokens; template and special tokens skew aggregates."""
        ordinary = torch.tensor(
            [token not in self._special_ids for token in prompt], device=self.scale.device
        )
        return ordinary if bool(ordinary.any()) else torch.ones_like(ordinary)

    def _strongest(self, features: torch.Tensor, aggregate_by: Aggregate) -> torch.Tensor:
        totals = features.sum(dim=0)
        if aggregate_by == "count":
            # Ties in the count are broken by total activation (the fraction stays below 1).
            score = (features > 0).sum(dim=0) + totals / (totals.max().clamp_min(0) + 1)
        elif aggregate_by == "mean":
            score = features.mean(dim=0)
        elif aggregate_by == "max":
            score = features.amax(dim=0)
        else:
            score = totals
        return _top_positive(score, REPORTED_FEATURES)

    @contextmanager
    def _steering(self, steering: _Steering) -> Iterator[None]:
        self._local.steering = steering
        try:
            yield
        finally:
            self._local.steering = None

    def _on_layer(self, _module: Any, _args: Any, output: Any) -> Any:
        steering: _Steering | None = getattr(self._local, "steering", None)
        if steering is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if steering.track_gradient:
            hidden = hidden.detach().requires_grad_()
        steered = steering(hidden)
        if steering.stop_after_layer:
            raise _StopForward
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    def _measure_residual_norm(self) -> float:
        """Median residual-stream norm at the hooked layer over CALIBRATION_PROMPTS."""
        norms = []
        for prompt in CALIBRATION_PROMPTS:
            ids = self.encode_chat([{"role": "user", "content": prompt}], "generate")
            # An empty plan never reads the scale, which is what is being calibrated.
            steering = _SteeringPass(
                self.bundle.sae,
                self._decoder_norms,
                EMPTY_PLAN,
                watch_from=len(ids),
                stop_after_layer=True,
            )
            self._run_to_layer(ids, steering)
            assert steering.residual is not None
            norms.append(steering.residual[0, 1:].float().norm(dim=-1))
        return float(torch.cat(norms).median())


def _group_activation(features: torch.Tensor, group: tuple[int, ...]) -> torch.Tensor:
    """The strongest activation of the group's features at each position."""
    if len(group) == 1:
        return features[:, group[0]]
    return features[:, list(group)].amax(dim=1)


def inference_threads(model: torch.nn.Module) -> int | None:
    """Torch intra-op threads for the inference thread: one for a small model on CPU, else None
    (torch's default, one per core)."""
    device = next(model.parameters()).device
    hidden = int(getattr(model.config, "hidden_size", SINGLE_THREAD_BELOW_HIDDEN))
    return 1 if device.type == "cpu" and hidden < SINGLE_THREAD_BELOW_HIDDEN else None


def _top_positive(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the (at most) k highest scores that are above zero, highest first."""
    values, indices = torch.topk(score, min(k, score.shape[0]))
    return indices[values > 0]
