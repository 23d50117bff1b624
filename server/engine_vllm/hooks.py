"""Per-token SAE steering inside vLLM: pins, multipliers and `set_when` scopes as a vllm-lens hook.

A plan that is not only nudges needs the SAE's activations at every step (steering.py has the
math). vllm-lens runs a per-request hook on the hooked layer's residual stream, in vLLM's worker
processes, inside the continuous batch; the hook is our own SteeringPass, over an SAE cut down to
the features the plan touches or reads. That cut is exact for ReLU and JumpReLU SAEs (each
feature's activation depends on its own encoder column alone), so a top-k SAE, whose features
compete, is not cut and such plans are refused. Scopes that report an event and end the reply
(`abort_when`, the bot's guards) are refused too: the worker cannot end a request early.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from server.engine.controller import Condition, Scope, SteeringPlan
from server.engine.steering import SteeringPass
from server.model.sae import SparseAutoencoder


def hook_problem(sae: SparseAutoencoder, plan: SteeringPlan) -> str | None:
    """What in `plan` a per-request hook cannot do, in words; None when it can do all of it."""
    if any(scope.event_name for part in plan.walk() for scope in part.scopes):
        return "scopes that end the reply (abort_when, guards) while generating"
    if sae.activation == "topk":
        return "pins, multipliers and scopes while generating on a top-k SAE"
    return None


def steering_hook(
    sae: SparseAutoencoder, scale: torch.Tensor, plan: SteeringPlan, layer: int, watch_from: int
) -> Any:
    """A vllm-lens Hook applying `plan` after decoder `layer`, as the transformers engine does
    (see hook_problem for what it cannot do)."""
    from vllm_lens import Hook

    features = sorted(_features_read(plan))
    position = {feature: number for number, feature in enumerate(features)}
    step = _SteeringStep(
        _cut(sae, features), scale[features].cpu(), _renumbered(plan, position), watch_from
    )
    return Hook(fn=step, layer_indices=[layer])


@dataclass
class _SteeringStep:
    """The hook: pickled to vLLM's workers, it builds its SteeringPass on the first call, on the
    device of the residual stream it sees (each tensor-parallel rank has its own)."""

    sae: SparseAutoencoder
    scale: torch.Tensor
    plan: SteeringPlan
    watch_from: int
    steering: SteeringPass | None = None

    def __call__(self, _context: Any, hidden: torch.Tensor) -> torch.Tensor:
        if self.steering is None:
            sae = self.sae.to(hidden.device)
            scale = self.scale.to(hidden.device)
            self.steering = SteeringPass(sae, scale, self.plan, watch_from=self.watch_from)
        return self.steering(hidden[None])[0]


def _features_read(plan: SteeringPlan) -> set[int]:
    read: set[int] = set()
    for part in plan.walk():
        read.update(edit.index for edit in part.edits)
        for scope in part.scopes:
            for condition in scope.trigger.conditions:
                read.update(condition.left)
                read.update(condition.right if isinstance(condition.right, tuple) else ())
    return read


def _cut(sae: SparseAutoencoder, features: list[int]) -> SparseAutoencoder:
    """The SAE restricted to `features`, on the CPU (for pickling)."""
    index = torch.tensor(features, dtype=torch.long, device=sae.W_enc.device)
    threshold = None if sae.threshold is None else sae.threshold.detach()[index]
    return SparseAutoencoder(
        sae.W_enc.detach()[:, index],
        sae.b_enc.detach()[index],
        sae.W_dec.detach()[index],
        sae.b_dec.detach(),
        activation=sae.activation,
        threshold=threshold,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
    ).cpu()


def _renumbered(plan: SteeringPlan, position: dict[int, int]) -> SteeringPlan:
    """`plan` with each feature index replaced by its position in the cut SAE."""

    def group(indices: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(position[index] for index in indices)

    def condition(old: Condition) -> Condition:
        right = group(old.right) if isinstance(old.right, tuple) else old.right
        return replace(old, left=group(old.left), right=right)

    def scope(old: Scope) -> Scope:
        trigger = replace(old.trigger, conditions=tuple(map(condition, old.trigger.conditions)))
        return replace(old, trigger=trigger, plan=_renumbered(old.plan, position))

    edits = tuple(replace(edit, index=position[edit.index]) for edit in plan.edits)
    return SteeringPlan(edits, tuple(map(scope, plan.scopes)))
