"""The rules user input must meet before anything changes: one clear message when it does not."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from bot.domain.errors import UserInputError
from bot.domain.types import VariantState

VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
INDEX_QUERY = re.compile(r"^#?(\d+)$")
RESET_SCOPES = ("steering", "history", "all")
MAX_GUARD_THRESHOLD = 1_000_000.0


def clean_text(text: str) -> str:
    """Text that can be stored and sent: lone surrogates (unencodable) become U+FFFD."""
    return text.encode("utf-8", errors="replace").decode("utf-8") if not text.isascii() else text


def validate_steering_value(value: float) -> float:
    if not math.isfinite(value) or not -1 <= value <= 1:
        raise UserInputError(f"Steering value must be between -1 and 1, got {value:g}.")
    return 0.0 if value == 0 else float(value)


def validate_guard_threshold(threshold: float) -> float:
    if not math.isfinite(threshold) or not 0 <= threshold <= MAX_GUARD_THRESHOLD:
        raise UserInputError(
            f"A guard threshold must be between 0 and {MAX_GUARD_THRESHOLD:g}, got {threshold:g}."
        )
    return float(threshold)


def validate_query(query: str, limit: int) -> str:
    query = " ".join(clean_text(query).split())
    if not query:
        raise UserInputError("Give some words to search for, e.g. `pirate`.")
    if len(query) > limit:
        raise UserInputError(
            f"Search text is limited to {limit} characters; yours has {len(query)}."
        )
    return query


def validate_variant_name(name: str) -> str:
    name = name.strip().lower()
    if not VARIANT_NAME.match(name):
        raise UserInputError(
            "Variant names are 1-32 characters: letters, digits, '-' and '_', "
            f"starting with a letter or digit (got {name[:40]!r})."
        )
    return name


def validate_top_k(top_k: int) -> int:
    if not 1 <= top_k <= 100:
        raise UserInputError(f"top_k must be between 1 and 100, got {top_k}.")
    return top_k


def storable(variant: VariantState) -> VariantState:
    """JSON can escape lone surrogates ("\\ud800"), which no database or request can carry."""
    edits = {
        index: replace(
            edit,
            feature=replace(
                edit.feature,
                label=clean_text(edit.feature.label),
                uuid=clean_text(edit.feature.uuid),
            ),
        )
        for index, edit in variant.edits.items()
    }
    return replace(variant, base_model=clean_text(variant.base_model), edits=edits)
