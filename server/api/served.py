"""What every route works with, kept on `app.state.served`: the runtime and the feature catalog
of the served model, and the helpers that turn request fields into runtime inputs."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Self

from fastapi import Depends, Request

from server.api import schemas
from server.api.catalog import Catalog
from server.engine.controller import SteeringPlan, WireController, compile_plan
from server.engine.prompts import Purpose
from server.engine.runtime import Runtime
from server.model.presets import ModelBundle


@dataclass(frozen=True)
class ServedModel:
    bundle: ModelBundle
    runtime: Runtime
    catalog: Catalog
    fingerprint: str  # the `system_fingerprint` of chat completions

    @classmethod
    def build(cls, bundle: ModelBundle, runtime: Runtime) -> Self:
        served = f"{bundle.model_id}|{bundle.sae_id}"
        fingerprint = "fp_" + hashlib.sha256(served.encode()).hexdigest()[:12]
        return cls(bundle, runtime, Catalog(bundle, runtime.d_sae), fingerprint)

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
