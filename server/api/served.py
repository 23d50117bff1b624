"""What every route works with, kept on `app.state.served`: the engine and the feature catalog
of the served model, and the helpers that turn request fields into runtime inputs."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Self

from fastapi import Depends, Request

from server.api import schemas
from server.api.catalog import Catalog
from server.api.feature_search import build_search
from server.engine.controller import SteeringPlan, WireController, compile_plan
from server.engine.interface import Engine
from server.engine.prompts import Purpose
from server.model.presets import ModelBundle
from server.model.search.blend import FeatureSearch


@dataclass(frozen=True)
class ServedModel:
    bundle: ModelBundle
    runtime: Engine
    catalog: Catalog
    fingerprint: str  # the `system_fingerprint` of chat completions
    search: FeatureSearch  # features by meaning: labels, embeddings, activations

    @classmethod
    def build(cls, bundle: ModelBundle, runtime: Engine) -> Self:
        served = f"{bundle.model_id}|{bundle.sae_id}"
        fingerprint = "fp_" + hashlib.sha256(served.encode()).hexdigest()[:12]
        catalog = Catalog(bundle, runtime.d_sae)
        return cls(bundle, runtime, catalog, fingerprint, build_search(bundle.labels, runtime))

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def plan(self, controller: WireController | None) -> SteeringPlan:
        return compile_plan(controller, self.runtime.d_sae)

    def prompt(self, messages: Sequence[schemas.Message], purpose: Purpose) -> list[int]:
        return self.runtime.encode_chat([m.model_dump() for m in messages], purpose)


def served_model(request: Request) -> ServedModel:
    served: ServedModel = request.app.state.served
    return served


Served = Annotated[ServedModel, Depends(served_model)]
