"""Request bodies of the Ember API, with the limits the hosted service enforced.

Every body names the `model`; the app checks it against the served model (see
`server.api.model_check`), since that id is only known at run time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.engine.controller import WireController

MAX_MESSAGES = 128
MAX_COMPLETION_TOKENS = 8192
MAX_INDICES = 2048  # neighbors' and lookup's feature indices
MAX_RANKED = 8192  # rerank's feature ids, and the top_k of rerank, neighbors and contrast


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


Messages = Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
StopString = Annotated[str, Field(max_length=200)]
StopStrings = StopString | Annotated[list[StopString], Field(max_length=16)]
FeatureIndices = Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_INDICES)]


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str


class ChatCompletionRequest(ModelRequest):
    messages: Messages
    stream: bool = False
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_COMPLETION_TOKENS)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, ge=0, le=1)
    stop: StopStrings | None = None
    seed: int | None = None
    controller: WireController | None = None


class LogitsRequest(ModelRequest):
    messages: Messages
    top_k: int | None = Field(default=10, ge=1, le=100)
    filter_vocabulary: Annotated[list[str], Field(max_length=1000)] | None = None
    controller: WireController | None = None


class FeaturesRequest(ModelRequest):
    messages: Messages
    aggregate_by: Literal["count", "mean", "max", "sum"] = "count"
    include_feature_indexes: Annotated[FeatureIndices, Field(max_length=512)] | None = None
    controller: WireController | None = None


class RerankRequest(ModelRequest):
    query: str = Field(max_length=1000)
    top_k: int = Field(default=10, ge=1, le=MAX_RANKED)
    feature_ids: Annotated[list[str], Field(max_length=MAX_RANKED)]


class NeighborsRequest(ModelRequest):
    feature_indices: Annotated[FeatureIndices, Field(min_length=1)]
    top_k: int = Field(default=10, ge=1, le=MAX_RANKED)


Dataset = Annotated[list[Messages], Field(min_length=1, max_length=64)]


class ContrastRequest(ModelRequest):
    dataset_1: Dataset
    dataset_2: Dataset
    k_to_add: int = Field(default=5, ge=1, le=MAX_RANKED)
    k_to_remove: int = Field(default=5, ge=1, le=MAX_RANKED)


class LookupRequest(ModelRequest):
    indices: FeatureIndices


class SpecificationRequest(ModelRequest):
    specification: str = Field(min_length=1, max_length=1000)


class AttributionRequest(ModelRequest):
    messages: Messages
    start_index: int = Field(alias="startIndex", ge=1)
    end_index: int = Field(alias="endIndex", ge=1)


class TokenizeRequest(ModelRequest):
    messages: Messages
