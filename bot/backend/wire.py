"""Wire builders and converters between our domain types and the goodfire SDK's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import goodfire

from bot.domain.types import FeatureEdit, FeatureRef, Guard, TokenActivation

Aggregate = Literal["max", "mean", "sum", "count"]


def sdk_feature(ref: FeatureRef) -> goodfire.Feature:
    """A goodfire.Feature whose uuid is a UUID whenever possible (hex and hyphenated alike)."""
    try:
        uuid: UUID | str = UUID(ref.uuid)
    except ValueError:
        uuid = ref.uuid
    # The SDK annotates uuid as UUID but sends a str as-is (docs/ember-api.md §3.7).
    return goodfire.Feature(uuid=uuid, label=ref.label, index_in_sae=ref.index_in_sae)  # type: ignore[arg-type]


def feature_ref(feature: goodfire.Feature) -> FeatureRef:
    return FeatureRef(feature.index_in_sae, feature.label, _canonical_uuid(str(feature.uuid)))


def searched_feature(hit: dict[str, Any]) -> FeatureRef:
    """One hit of `/features/search` as JSON: the SDK's fields plus ember-bot's `label_score`,
    which the SDK's response model drops."""
    score = hit.get("label_score")
    return FeatureRef(
        int(hit["index_in_sae"]),
        str(hit["label"]),
        _canonical_uuid(str(hit["id"])),
        label_score=float(score) if isinstance(score, int | float) else None,
    )


def _canonical_uuid(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        return value


def build_variant(model: str, edits: list[FeatureEdit]) -> goodfire.Variant:
    """A fresh Variant with one nudge per index_in_sae (the last edit for an index wins)."""
    variant = goodfire.Variant(model)  # type: ignore[arg-type]  # any served model is fine
    by_index = {edit.feature.index_in_sae: edit for edit in edits}
    for edit in by_index.values():
        variant.set(sdk_feature(edit.feature), edit.value)
    return variant


def guard_scope(guard: Guard) -> dict[str, Any]:
    """The controller scope `variant.abort_when(feature > threshold)` sends, with our own
    event name so that the event tells which guard fired."""
    feature = sdk_feature(guard.feature).json()
    return {
        "conditionals": {
            "conditionals": [
                {
                    "left_hand": {"features": [feature]},
                    "right_hand": guard.threshold,
                    "operator": ">",
                }
            ],
            "operator": "AND",
        },
        "controller": {"interventions": [], "scopes": []},
        "is_active": False,
        "event_name": guard.event_name,
    }


def controller_json(
    model: str, edits: Sequence[FeatureEdit], guards: Sequence[Guard] = ()
) -> dict[str, Any] | None:
    """The `controller` of a chat request: the edits' nudges and one abort scope per guard."""
    if not edits and not guards:
        return None
    controller = build_variant(model, list(edits)).controller.json()
    controller["scopes"] = [guard_scope(guard) for guard in guards]
    return controller


def token_activation(token: Any, index: int) -> TokenActivation:
    strength = next(
        (a["activation_strength"] for a in token._feature_acts if a["index_in_sae"] == index), 0.0
    )
    return TokenActivation(token._token, max(0.0, float(strength)))


@dataclass
class _Aggregate:
    uuid: str
    count: int = 0
    max: float = 0.0
    sum: float = 0.0

    def add(self, strength: float) -> None:
        self.count += 1
        self.max = max(self.max, strength)
        self.sum += strength

    def value(self, aggregate: Aggregate) -> float:
        if aggregate == "mean":
            return self.sum / self.count
        return float(getattr(self, aggregate))


def aggregate_tokens(tokens: list[Any]) -> dict[int, _Aggregate]:
    """Per index_in_sae: how often, how strongly and in total a feature fired over the tokens."""
    totals: dict[int, _Aggregate] = {}
    for token in tokens:
        for act in token._feature_acts:  # the SDK keeps each token's raw attributions here
            if act["activation_strength"] > 0:
                index = act["index_in_sae"]
                totals.setdefault(index, _Aggregate(_canonical_uuid(act["id"]))).add(
                    act["activation_strength"]
                )
    return totals
