"""Variants in the goodfire SDK's `Variant.json()` shape, for export and import."""

from __future__ import annotations

import json
import math
from typing import Any

from bot.domain.errors import UserInputError
from bot.domain.types import FeatureEdit, FeatureRef, VariantState


def to_sdk_json(variant: VariantState) -> dict[str, Any]:
    """The dict `goodfire.Variant.from_json` accepts."""
    return {
        "base_model": variant.base_model,
        "edits": [
            {
                "feature_id": edit.feature.uuid,
                "feature_label": edit.feature.label,
                "index_in_sae": edit.feature.index_in_sae,
                "value": edit.value,
            }
            for edit in variant.sorted_edits()
        ],
        "scopes": [],
    }


def from_sdk_json(text: str, *, name: str, max_edits: int) -> VariantState:
    """Parse and validate an exported variant; raises UserInputError naming the problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(
            f"That is not valid JSON: {error.msg} at line {error.lineno}."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("edits"), list):
        raise UserInputError('A variant is a JSON object with an "edits" list.')
    if len(data["edits"]) > max_edits:
        raise UserInputError(
            f"That variant has {len(data['edits'])} edits; the limit is {max_edits}."
        )
    base_model = data.get("base_model")
    if not isinstance(base_model, str) or not base_model:
        raise UserInputError('The variant needs a "base_model" string.')
    edits = [_parse_edit(position, raw) for position, raw in enumerate(data["edits"], start=1)]
    return VariantState(name, base_model, {edit.feature.index_in_sae: edit for edit in edits})


def _parse_edit(position: int, raw: Any) -> FeatureEdit:
    where = f"Edit {position}"
    if not isinstance(raw, dict):
        raise UserInputError(f"{where} must be an object.")
    index, value = raw.get("index_in_sae"), raw.get("value")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise UserInputError(f'{where}: "index_in_sae" must be a non-negative integer.')
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise UserInputError(f'{where}: "value" must be a number.')
    if not -1 <= value <= 1:
        raise UserInputError(f"{where}: value must be between -1 and 1, got {value:g}.")
    label = raw.get("feature_label")
    feature = FeatureRef(
        index,
        label if isinstance(label, str) and label else f"feature {index}",
        str(raw.get("feature_id") or ""),
    )
    return FeatureEdit(feature, float(value))
