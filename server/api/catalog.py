"""The served SAE's features as the API names them: UUID, label and index."""

from collections.abc import Sequence
from typing import Any

from server.model.ids import FeatureIds, UnknownFeatureError
from server.model.presets import ModelBundle


class Catalog:
    def __init__(self, bundle: ModelBundle, d_sae: int) -> None:
        self.ids = FeatureIds(bundle.model_id, bundle.sae_id, d_sae)
        self.labels = bundle.labels

    def identify(self, index: int) -> dict[str, Any]:
        """A feature as compute-features names it: no label (clients fetch labels by id)."""
        return {"id": str(self.ids.uuid_of(index)), "index_in_sae": index}

    def describe(self, index: int, id_key: str = "id") -> dict[str, Any]:
        return {
            id_key: str(self.ids.uuid_of(index)),
            "label": self.labels.label(index),
            "index_in_sae": index,
        }

    def scored(self, hits: Sequence[tuple[int, float]]) -> dict[str, Any]:
        return {"features": [self._hit(i, score) for i, score in hits]}

    def _hit(self, index: int, relevance: float) -> dict[str, Any]:
        """A search hit; `label_score` is a generated label's detection score (ember-bot label)."""
        hit = {**self.describe(index), "relevance": relevance}
        if (label_score := self.labels.scores.get(index)) is not None:
            hit["label_score"] = label_score
        return hit

    def check(self, indices: Sequence[int]) -> list[int]:
        unknown = [index for index in indices if index >= len(self.ids)]
        if unknown:
            raise UnknownFeatureError(
                f"Unknown feature index {unknown[0]}: this SAE has {len(self.ids)} features "
                f"(0-{len(self.ids) - 1})."
            )
        return list(indices)

    def resolve(self, feature_ids: Sequence[str]) -> list[int]:
        indices = []
        for text in feature_ids:
            index = self.ids.index_of(text)
            if index is None:
                raise UnknownFeatureError(
                    f"Unknown feature id {text!r}: not a feature of this SAE."
                )
            indices.append(index)
        return indices
