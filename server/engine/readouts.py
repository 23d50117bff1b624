"""Reading the model: feature activations, next-token logits, contrasts, neighbours, attributions.

Each method runs forward passes and so belongs on the inference worker's thread; Runtime exposes
them as coroutines that run them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy
import torch

from server.engine.controller import EMPTY_PLAN, SteeringPlan
from server.engine.hooked_model import HookedModel
from server.engine.prompts import ChatPrompts
from server.engine.steering import PassFactory
from server.model.sae import SparseAutoencoder

REPORTED_FEATURES = 64

Aggregate = Literal["count", "mean", "max", "sum"]


@dataclass(frozen=True)
class TokenActivations:
    token: str
    activations: list[tuple[int, float]]  # (feature index, activation), strongest first


@dataclass(frozen=True)
class FeatureAttribution:
    index: int
    value: float  # estimated drop of the target logits if the feature were ablated
    activations: list[tuple[int, float]]  # (token position, activation) where it is active


class Readouts:
    def __init__(
        self,
        hooked: HookedModel,
        prompts: ChatPrompts,
        sae: SparseAutoencoder,
        decoder_norms: torch.Tensor,
        new_pass: PassFactory,
    ) -> None:
        self._hooked = hooked
        self._prompts = prompts
        self._sae = sae
        self._decoder_norms = decoder_norms
        self._new_pass = new_pass
        self._special_ids = set(prompts.tokenizer.all_special_ids)
        self._d_sae = int(sae.W_dec.shape[0])

    def inspect(
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
        features = self._features(prompt, plan)
        if include is None:
            chosen = self._strongest(features[self._content_positions(prompt)], aggregate_by)
        else:
            chosen = torch.tensor(sorted(set(include)), dtype=torch.long, device=features.device)
        # Each token's activations strongest first (ties in feature order): only the active
        # ones, unless the features were asked for by name. The [tokens, chosen] block is small,
        # so it is sorted on the CPU in numpy (a few µs per operation, where torch takes tens)
        # and copied out in one piece, not row by row.
        block = features[:, chosen].float().cpu().numpy()
        if not numpy.isfinite(block).all():
            raise ValueError("an activation is not a finite number")
        order = numpy.argsort(-block, axis=1, kind="stable")
        values = numpy.take_along_axis(block, order, axis=1)
        shown = (
            (values > 0).sum(axis=1) if include is None else numpy.full(len(prompt), len(chosen))
        )
        counts = shown.tolist()
        width = max(counts, default=0)
        kept = numpy.arange(width) < shown[:, None]
        found = chosen.cpu().numpy()[order[:, :width]][kept].tolist()
        pairs = list(zip(found, values[:, :width][kept].tolist(), strict=True))
        rows, start = [], 0
        for token, count in zip(self._prompts.token_strings(prompt), counts, strict=True):
            rows.append(TokenActivations(token, pairs[start : start + count]))
            start += count
        return rows

    def logits(
        self, prompt: list[int], plan: SteeringPlan, top_k: int, vocabulary: Sequence[str] | None
    ) -> dict[str, float]:
        """The `top_k` next-token logits, keyed by token text (or by the strings asked for)."""
        logits = self._hooked.next_token_logits(prompt, self._new_pass(plan, watch_from=0))
        if vocabulary is not None:
            candidates = {text: self._first_token(text) for text in vocabulary}
            scored = [(float(logits[i]), text) for text, i in candidates.items() if i is not None]
            return {text: value for value, text in sorted(scored, reverse=True)[:top_k]}
        values, ids = torch.topk(logits.float(), min(top_k, logits.shape[-1]))
        result: dict[str, float] = {}
        for value, token in zip(
            values.tolist(), self._prompts.token_strings(ids.tolist()), strict=True
        ):
            result.setdefault(token, value)
        return result

    def _first_token(self, text: str) -> int | None:
        ids = self._prompts.tokenizer(text, add_special_tokens=False).input_ids
        return ids[0] if ids else None

    def contrast(
        self, dataset_1: list[list[int]], dataset_2: list[list[int]], k_1: int, k_2: int
    ) -> tuple[list[int], list[int]]:
        """Features whose mean activation is higher in dataset 1 (top k_1) and in 2 (top k_2)."""
        difference = self._mean_features(dataset_2) - self._mean_features(dataset_1)
        toward_1, toward_2 = _top_positive(-difference, k_1), _top_positive(difference, k_2)
        return toward_1.tolist(), toward_2.tolist()

    def _mean_features(self, prompts: list[list[int]]) -> torch.Tensor:
        means = [
            self._features(prompt, EMPTY_PLAN)[self._content_positions(prompt)].mean(dim=0)
            for prompt in prompts
        ]
        return torch.stack(means).mean(dim=0)

    def neighbors(self, indices: Sequence[int], top_k: int) -> list[tuple[int, float]]:
        """Features whose decoder directions are closest (cosine) to the mean of `indices`'."""
        decoder = self._sae.W_dec.detach()
        query_rows = torch.tensor(list(indices), dtype=torch.long, device=decoder.device)
        direction = (decoder[query_rows] / self._decoder_norms[query_rows, None]).mean(dim=0)
        cosine = (decoder @ direction) / (self._decoder_norms * direction.norm().clamp_min(1e-8))
        cosine[query_rows] = -torch.inf
        values, found = torch.topk(cosine, min(top_k, self._d_sae - len(set(indices))))
        return list(zip(found.tolist(), values.tolist(), strict=True))

    def attribute(
        self, prompt: list[int], start: int, end: int, top_k: int
    ) -> list[FeatureAttribution]:
        """Features whose activations most raise the logits of tokens start..end of `prompt`.

        Linear estimate (gradient times activation) of how much the target tokens' logits would
        drop if each feature were ablated at every earlier position.
        """
        residual, target = self._residual_gradient(prompt, start, end)
        with torch.inference_mode():
            features = self._sae.encode(residual.to(self._sae.W_dec.dtype))
            effect = features * (target.to(features.dtype) @ self._sae.W_dec.T)
            totals = effect.sum(dim=0)
            values, found = torch.topk(totals, min(top_k, self._d_sae))
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
        """The hooked residual stream and the gradient of the target logits with respect to it.

        The only tensor that asks for a gradient is that residual (the hook makes it a leaf;
        the model's parameters are frozen), so autograd records nothing below the hooked layer
        and keeps no parameter gradient: just what the backward pass to the residual needs.
        """
        steering = self._new_pass(EMPTY_PLAN, watch_from=len(prompt), track_gradient=True)
        ids = torch.tensor([prompt], device=self._hooked.device)
        with torch.enable_grad(), self._hooked.steered(steering):
            logits = self._hooked.model(input_ids=ids, use_cache=False).logits[0]
            targets = torch.arange(start, end + 1, device=logits.device)
            score = logits[targets - 1, ids[0].to(logits.device)[targets]].sum()
            assert steering.residual is not None
            (gradient,) = torch.autograd.grad(score, steering.residual)
        return steering.residual[0].detach(), gradient[0]

    def _features(self, prompt: list[int], plan: SteeringPlan) -> torch.Tensor:
        """SAE activations ([tokens, d_sae]) at the hooked layer, after `plan`'s steering."""
        steering = self._new_pass(plan, watch_from=0, capture_features=True, stop_after_layer=True)
        self._hooked.run_to_layer(prompt, steering)
        assert steering.features is not None
        return steering.features

    def _content_positions(self, prompt: list[int]) -> torch.Tensor:
        """Positions of ordinary tokens; template and special tokens skew aggregates."""
        ordinary = torch.tensor(
            [token not in self._special_ids for token in prompt], device=self._decoder_norms.device
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


def _top_positive(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the (at most) k highest scores that are above zero, highest first."""
    values, indices = torch.topk(score, min(k, score.shape[0]))
    return indices[values > 0]
