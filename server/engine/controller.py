"""The `controller` wire object (what a goodfire Variant sends) and the plan it compiles to.

The wire models validate shape only (FastAPI turns their errors into 422s). `compile_plan` then
checks the features against the served SAE and produces an immutable `SteeringPlan` that the
runtime applies. A feature's identity is its `index_in_sae`; the `uuid` and `label` a client sends
are ignored, so variants stored by index keep working whatever ids the client remembers.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.model.ids import UnknownFeatureError

InterventionMode = Literal["nudge", "pin", "mul"]
ComparisonOperator = Literal[">", "<", "==", ">=", "<=", "!="]
JoinOperator = Literal["AND", "OR"]

MAX_SCOPE_DEPTH = 8
MAX_STEERING_VALUE = 100.0

GroupReader = Callable[[tuple[int, ...]], Any]

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WireFeature(_Wire):
    uuid: str = ""
    label: str = ""
    index_in_sae: int = Field(ge=0)
    max_activation_strength: float | None = None


class WireFeatureGroup(_Wire):
    features: list[WireFeature] = Field(min_length=1, max_length=512)


class WireIntervention(_Wire):
    mode: InterventionMode
    features: WireFeatureGroup
    value: float = Field(ge=-MAX_STEERING_VALUE, le=MAX_STEERING_VALUE, allow_inf_nan=False)


class WireConditional(_Wire):
    left_hand: WireFeatureGroup
    right_hand: float | WireFeatureGroup | WireFeature
    operator: ComparisonOperator


class WireConditionalGroup(_Wire):
    conditionals: list[WireConditional] = Field(min_length=1, max_length=64)
    operator: JoinOperator = "AND"


class WireScope(_Wire):
    conditionals: WireConditionalGroup
    controller: WireController
    is_active: bool = False
    event_name: str | None = Field(default=None, max_length=200)


class WireController(_Wire):
    interventions: list[WireIntervention] = Field(default_factory=list, max_length=1024)
    scopes: list[WireScope] = Field(default_factory=list, max_length=64)
    name: str | None = None
    # Accepted for compatibility; this server's steering does not use them.
    nonzero_strength_threshold: float | None = None
    min_nudge_entropy: float | None = None
    max_nudge_entropy: float | None = None


WireScope.model_rebuild()


class ControllerError(ValueError):
    """A controller that is well-formed JSON but cannot be served (e.g. nested too deeply)."""


@dataclass(frozen=True)
class Edit:
    """One intervention on one feature, in the units the runtime documents."""

    mode: InterventionMode
    index: int
    value: float


@dataclass(frozen=True)
class Condition:
    """`left <op> right` over feature groups; `right` is a number or another group.

    `read` maps a group of feature indices to the group's activation (the runtime passes the
    maximum over the group, as a tensor over positions), so `holds` works elementwise.
    """

    left: tuple[int, ...]
    right: float | tuple[int, ...]
    operator: ComparisonOperator

    def holds(self, read: GroupReader) -> Any:
        right = read(self.right) if isinstance(self.right, tuple) else self.right
        return COMPARISONS[self.operator](read(self.left), right)


@dataclass(frozen=True)
class Trigger:
    conditions: tuple[Condition, ...]
    join: JoinOperator

    def holds(self, read: GroupReader) -> Any:
        join = operator.and_ if self.join == "AND" else operator.or_
        return functools.reduce(join, (condition.holds(read) for condition in self.conditions))


@dataclass(frozen=True)
class Scope:
    """Steering that switches on (and stays on) once `trigger` holds on a generated token.

    A scope with an `event_name` reports that name when it fires and ends generation there.
    """

    trigger: Trigger
    plan: SteeringPlan
    event_name: str | None


@dataclass(frozen=True)
class SteeringPlan:
    edits: tuple[Edit, ...] = ()
    scopes: tuple[Scope, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.edits and not self.scopes

    @property
    def only_nudges(self) -> bool:
        """True when applying the plan needs no SAE activations."""
        return not self.scopes and all(edit.mode == "nudge" for edit in self.edits)

    def walk(self) -> Iterator[SteeringPlan]:
        """This plan and every nested scope's plan, depth first."""
        yield self
        for scope in self.scopes:
            yield from scope.plan.walk()


EMPTY_PLAN = SteeringPlan()


def compile_plan(controller: WireController | None, d_sae: int) -> SteeringPlan:
    """Check every feature against an SAE of `d_sae` features and build the plan.

    Raises UnknownFeatureError for an index outside the SAE and ControllerError for scopes
    nested deeper than MAX_SCOPE_DEPTH.
    """
    if controller is None:
        return EMPTY_PLAN
    return _Compiler(d_sae).plan(controller, depth=0)


class _Compiler:
    def __init__(self, d_sae: int) -> None:
        self._d_sae = d_sae

    def plan(self, controller: WireController, depth: int) -> SteeringPlan:
        if depth > MAX_SCOPE_DEPTH:
            raise ControllerError(f"Scopes may be nested at most {MAX_SCOPE_DEPTH} deep.")
        edits = tuple(
            Edit(intervention.mode, index, intervention.value)
            for intervention in controller.interventions
            for index in self.indices(intervention.features)
        )
        scopes = tuple(self.scope(scope, depth) for scope in controller.scopes)
        return SteeringPlan(edits, scopes)

    def scope(self, scope: WireScope, depth: int) -> Scope:
        trigger = Trigger(
            tuple(self.condition(c) for c in scope.conditionals.conditionals),
            scope.conditionals.operator,
        )
        return Scope(trigger, self.plan(scope.controller, depth + 1), scope.event_name)

    def condition(self, conditional: WireConditional) -> Condition:
        right = conditional.right_hand
        if isinstance(right, WireFeature):
            right = WireFeatureGroup(features=[right])
        right_value = self.indices(right) if isinstance(right, WireFeatureGroup) else right
        return Condition(self.indices(conditional.left_hand), right_value, conditional.operator)

    def indices(self, group: WireFeatureGroup) -> tuple[int, ...]:
        for feature in group.features:
            if feature.index_in_sae >= self._d_sae:
                raise UnknownFeatureError(
                    f"Unknown feature index {feature.index_in_sae}: this SAE has "
                    f"{self._d_sae} features (0-{self._d_sae - 1})."
                )
        return tuple(feature.index_in_sae for feature in group.features)
