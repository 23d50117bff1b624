"""Steering: how a plan's interventions and conditional scopes change the hooked residual stream.

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
time over CALIBRATION_PROMPTS (calibration.py; first position excluded: it is an attention sink with
an outsized norm). So a nudge of +1 adds a vector half as long as a typical residual-stream vector:
a strong push that models still answer coherently through, as Ember's +-1 was; +-0.3 to 0.5 is
gentle.

Conditional scopes (`set_when`, `abort_when`) compare feature activations in the SAE's own units
(the same numbers compute-features reports), after the interventions of the enclosing controller.
They are checked on every generated token (prompt tokens only count for compute-features and
compute-logits, where there is no generation). A scope switches on at the first token where its
condition holds and stays on for the rest of the request; a scope with an event name reports the
name and ends the generation there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from server.engine.controller import Scope, SteeringPlan
from server.model.sae import SparseAutoencoder


class Steering(Protocol):
    """What the layer hook applies: one request's steering, or a batch's."""

    stop_after_layer: bool
    track_gradient: bool

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor: ...


class SteeringPass:
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


# Builds a request's SteeringPass from its plan (the other arguments as SteeringPass takes them).
PassFactory = Callable[..., SteeringPass]


class BatchSteering:
    """Every row's own steering in one batched forward pass (hidden: [rows, tokens, d_in]).

    Nudges are added for all rows at once (a zero row for the others, which leaves them exactly
    as they were); rows whose steering reads SAE features go through their own SteeringPass,
    without their left padding, so each row is steered exactly as it would be alone.
    """

    stop_after_layer = False
    track_gradient = False

    def __init__(self, passes: Sequence[SteeringPass], padding: Sequence[int] = ()) -> None:
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


def _group_activation(features: torch.Tensor, group: tuple[int, ...]) -> torch.Tensor:
    """The strongest activation of the group's features at each position."""
    if len(group) == 1:
        return features[:, group[0]]
    return features[:, list(group)].amax(dim=1)
