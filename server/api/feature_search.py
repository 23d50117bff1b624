"""The served model's feature search: labels, their embeddings, and activation search read
through the engine (see server/model/search/)."""

from collections.abc import Sequence

from server.engine.controller import EMPTY_PLAN
from server.engine.interface import Engine, UnsupportedByEngine
from server.engine.prompts import PromptError
from server.model.labels import LabelIndex
from server.model.search.activation import ActivationSearch, Readout
from server.model.search.blend import FeatureSearch


def build_search(labels: LabelIndex, engine: Engine) -> FeatureSearch:
    return FeatureSearch(labels, ActivationSearch(engine_readout(engine)))


def engine_readout(engine: Engine) -> Readout:
    """Each feature's strongest activation over `text` read as a user message (the strongest
    features when `features` is None), as every readout runs."""

    async def readout(text: str, features: Sequence[int] | None) -> dict[int, float]:
        try:
            prompt = engine.encode_chat([{"role": "user", "content": text}], "read")
            rows = await engine.inspect(prompt, EMPTY_PLAN, "max", features)
        except (UnsupportedByEngine, PromptError):  # search goes on without activations
            return {}
        strongest: dict[int, float] = {}
        for row in rows:
            for index, value in row.activations:
                strongest[index] = max(strongest.get(index, 0.0), value)
        return strongest

    return readout
