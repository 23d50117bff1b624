"""Deterministic feature ids: the same (model, SAE, index) always gets the same UUID."""

from __future__ import annotations

import uuid

# Fixed namespace for every id this server mints (uuid5 of the project's name).
FEATURE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "ember-bot/feature")


def feature_uuid(model_id: str, sae_id: str, index: int) -> uuid.UUID:
    """The UUID of feature `index` of SAE `sae_id` hooked into `model_id`."""
    return uuid.uuid5(FEATURE_NAMESPACE, f"{model_id}\n{sae_id}\n{index}")


def parse_feature_id(text: str) -> uuid.UUID | None:
    """Parse a hyphenated or 32-hex UUID; None when `text` is neither."""
    try:
        return uuid.UUID(text.strip())
    except (ValueError, AttributeError):
        return None


class FeatureIds:
    """Both directions between feature indices and their UUIDs for one served SAE."""

    def __init__(self, model_id: str, sae_id: str, d_sae: int) -> None:
        self._ids = [feature_uuid(model_id, sae_id, index) for index in range(d_sae)]
        self._index_of = {feature_id: index for index, feature_id in enumerate(self._ids)}

    def __len__(self) -> int:
        return len(self._ids)

    def uuid_of(self, index: int) -> uuid.UUID:
        return self._ids[index]

    def index_of(self, text: str) -> int | None:
        """The index of the feature with id `text` (either spelling); None if unknown."""
        parsed = parse_feature_id(text)
        return None if parsed is None else self._index_of.get(parsed)


class UnknownFeatureError(LookupError):
    """A request named a feature this server's SAE does not have."""
