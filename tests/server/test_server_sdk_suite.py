"""Each behaviour the goodfire SDK's own e2e suite checks, here through the unmodified SDK
against the tiny server (`bench/sdk_suite.py` runs that suite itself, but it needs a checkout
of goodfire-sdk, so not in CI). The suite's queries, conversations and expected error texts are
used as it has them; where the suite and this server must differ, the test says why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import goodfire
import httpx
import numpy as np
import pytest
from goodfire import Feature, FeatureGroup
from goodfire.api.chat.interfaces import ChatCompletion, LogitsResponse
from goodfire.api.chat.interfaces import StreamingChatCompletionChunk as Chunk
from goodfire.api.exceptions import RequestFailedException
from goodfire.api.features.client import FeatureActivations

from server.api.app import API_PREFIX

HELLO = [{"role": "user", "content": "Hello how are you?"}]
SYNTHESIZERS = [
    {
        "role": "user",
        "content": "Analog synthesizers are interesting instruments. What is an example of a "
        "synthesizer company?",
    },
    {"role": "assistant", "content": "An example of a synthesizer company is Moog."},
]
PLACEHOLDER = Feature("test_feature_id", "test_feature_label", 0)  # the suite's own

Call = Callable[[goodfire.AsyncClient, Any], Awaitable[Any]]


def at_most(limit: int, given: int) -> str:
    return f"List should have at most {limit} items after validation, not {given}"


AT_LEAST_ONE = "List should have at least 1 item after validation, not 0"
AT_LEAST_1 = "Input should be greater than or equal to 1"
AT_LEAST_0 = "Input should be greater than or equal to 0"


def placeholders(count: int) -> list[Feature]:
    return [PLACEHOLDER] * count


def bounds_of_reading(method: str) -> dict[str, tuple[Call, str]]:
    """`features.activations` and `features.inspect` share a route, and so its bounds."""

    def read(client: goodfire.AsyncClient, model: Any, messages: Any, **options: Any) -> Any:
        return getattr(client.features, method)(messages, model=model, **options)

    return {
        f"{method}, 129 messages": (lambda c, m: read(c, m, HELLO * 129), at_most(128, 129)),
        f"{method}, no messages": (lambda c, m: read(c, m, []), AT_LEAST_ONE),
        f"{method}, 513 features": (
            lambda c, m: read(c, m, HELLO, features=placeholders(513)),
            at_most(512, 513),
        ),
    }


# The suite's bad requests, with the 422 text it expects (pydantic's words, hosted bounds).
BAD_REQUESTS: dict[str, tuple[Call, str]] = {
    "logits, 129 messages": (
        lambda c, m: c.chat.logits(HELLO * 129, model=m),
        at_most(128, 129),
    ),
    "logits, no messages": (lambda c, m: c.chat.logits([], model=m), AT_LEAST_ONE),
    "chat, 129 messages and the SDK's system prompt": (
        lambda c, m: c.chat.completions.create(HELLO * 129, model=m),
        at_most(128, 130),
    ),
    "chat, top_p 1.1": (
        lambda c, m: c.chat.completions.create(HELLO, model=m, top_p=1.1),
        "Input should be less than or equal to 1",
    ),
    "chat, top_p -0.1": (
        lambda c, m: c.chat.completions.create(HELLO, model=m, top_p=-0.1),
        AT_LEAST_0,
    ),
    "chat, temperature -0.1": (
        lambda c, m: c.chat.completions.create(HELLO, model=m, temperature=-0.1),
        AT_LEAST_0,
    ),
    "chat, temperature 2.1": (
        lambda c, m: c.chat.completions.create(HELLO, model=m, temperature=2.1),
        "Input should be less than or equal to 2",
    ),
    "search, top_k 101": (
        lambda c, m: c.features.search("pirate", model=m, top_k=101),
        "Input should be less than or equal to 100",
    ),
    "search, top_k 0": (lambda c, m: c.features.search("pirate", model=m, top_k=0), AT_LEAST_1),
    "neighbors, 2049 features": (
        lambda c, m: c.features.neighbors(FeatureGroup(placeholders(2049)), model=m),
        at_most(2048, 2049),
    ),
    "neighbors, no features": (
        lambda c, m: c.features.neighbors(FeatureGroup([]), model=m),
        AT_LEAST_ONE,
    ),
    "neighbors, top_k 0": (
        lambda c, m: c.features.neighbors(PLACEHOLDER, model=m, top_k=0),
        AT_LEAST_1,
    ),
    "neighbors, top_k 8193": (
        lambda c, m: c.features.neighbors(PLACEHOLDER, model=m, top_k=8193),
        "Input should be less than or equal to 8192",
    ),
    "rerank, top_k 0": (
        lambda c, m: c.features.rerank(FeatureGroup([]), "rum", model=m, top_k=0),
        AT_LEAST_1,
    ),
    "rerank, top_k 8193": (
        lambda c, m: c.features.rerank(FeatureGroup([]), "rum", model=m, top_k=8193),
        "Input should be less than or equal to 8192",
    ),
    "rerank, 8193 features": (
        lambda c, m: c.features.rerank(FeatureGroup(placeholders(8193)), "rum", model=m),
        at_most(8192, 8193),
    ),
    **bounds_of_reading("activations"),
    **bounds_of_reading("inspect"),
    "contrast, 65 conversations": (
        lambda c, m: c.features.contrast([HELLO] * 65, [HELLO] * 65, model=m),
        at_most(64, 65),
    ),
    "contrast, top_k 0": (
        lambda c, m: c.features.contrast([HELLO], [HELLO], model=m, top_k=0),
        AT_LEAST_1,
    ),
    "contrast, top_k 8193": (
        lambda c, m: c.features.contrast([HELLO], [HELLO], model=m, top_k=8193),
        "Input should be less than or equal to 8192",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_requests_get_the_hosted_422_texts(client, model_id, case) -> None:
    call, expected = BAD_REQUESTS[case]
    with pytest.raises(RequestFailedException, match=expected):
        await call(client, goodfire.Variant(model_id))


OTHER_MODEL_CALLS: dict[str, Call] = {
    "logits": lambda c, m: c.chat.logits(HELLO, model=m),
    "chat": lambda c, m: c.chat.completions.create(HELLO, model=m),
    "search": lambda c, m: c.features.search("pirate", model=m),
    "neighbors": lambda c, m: c.features.neighbors(PLACEHOLDER, model=m),
    "rerank": lambda c, m: c.features.rerank(FeatureGroup([]), "rum", model=m),
    "activations": lambda c, m: c.features.activations(HELLO, model=m),
    "contrast": lambda c, m: c.features.contrast([HELLO], [HELLO], model=m),
}


@pytest.mark.parametrize("call", list(OTHER_MODEL_CALLS))
async def test_another_model_is_refused_naming_the_served_one(client, model_id, call) -> None:
    """The suite expects "Input should be 'meta-llama/Meta-Llama-3.1-8B-Instruct' or
    'meta-llama/Llama-3.3-70B-Instruct'": pydantic's literal error over the hosted catalogue.
    This server answers in the same shape, naming the one model it serves instead."""
    with pytest.raises(RequestFailedException, match=f"Input should be '{model_id}'"):
        await OTHER_MODEL_CALLS[call](client, "unsupported-model")


async def test_contrast_of_empty_datasets_is_refused_before_any_request(client, model_id) -> None:
    with pytest.raises(ValueError, match="at least one element"):
        await client.features.contrast([], [], model=model_id)


async def test_chat_and_logits_answer_in_the_sdk_types(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    assert isinstance(await client.chat.logits(HELLO, model=variant), LogitsResponse)
    reply = await client.chat.completions.create(HELLO, model=variant, max_completion_tokens=8)
    assert isinstance(reply, ChatCompletion)
    stream = await client.chat.completions.create(
        HELLO, model=variant, stream=True, max_completion_tokens=10
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(isinstance(chunk, Chunk) for chunk in chunks)


@pytest.mark.parametrize(
    ("query", "top_k"),
    [
        ("pirate", None),  # the SDK's default: 10
        ("pirate", 5),
        ("talk like a pirate", 5),
        ("music", 5),
        ("venues", 5),
        ("company", 5),
        ("music performance", 10),
        ("performing arts venues", 10),
    ],
)
async def test_search_fills_top_k_with_distinct_features(client, model_id, query, top_k) -> None:
    options = {} if top_k is None else {"top_k": top_k}
    found = await client.features.search(query, model=goodfire.Variant(model_id), **options)
    assert isinstance(found, FeatureGroup)
    assert all(isinstance(feature, Feature) for feature in found)
    assert len({feature.index_in_sae for feature in found}) == len(found) == (top_k or 10)


async def test_neighbors_rerank_contrast_lookup_and_activations(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    pirate = await client.features.search("pirate", model=variant, top_k=5)
    assert len(await client.features.neighbors(pirate[0], model=variant)) == 10
    reranked = await client.features.rerank(pirate, "rum", model=variant, top_k=5)
    assert sorted(f.index_in_sae for f in reranked) == sorted(f.index_in_sae for f in pirate)

    chatty = [[HELLO[0], {"role": "assistant", "content": "I am a helpful assistant. How can "}]]
    joke = [[HELLO[0], {"role": "user", "content": "What do you call an alligator in a vest?"}]]
    toward_1, toward_2 = await client.features.contrast(chatty, joke, model=variant, top_k=2)
    assert (len(toward_1), len(toward_2)) == (2, 2)

    looked_up = await client.features.lookup([0, 1, 2], model=variant)
    assert sorted(looked_up) == [0, 1, 2]
    assert all(isinstance(feature, Feature) for feature in looked_up.values())

    matrix = await client.features.activations(HELLO, model=variant)
    assert isinstance(matrix, np.ndarray) and matrix.any()


async def test_rerank_puts_a_contrast_result_in_another_order(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    how = [
        {"role": "user", "content": "How do synthesizers work?"},
        {
            "role": "assistant",
            "content": "Synthesizers are electronic instruments that generate sound through "
            "various techniques, including analog and digital synthesis.",
        },
    ]
    _, toward_how = await client.features.contrast([SYNTHESIZERS], [how], model=variant, top_k=10)
    reranked = await client.features.rerank(toward_how, "instruments", model=variant, top_k=5)
    assert reranked[0].uuid != toward_how[0].uuid


async def test_inspect_context_workflow(client, model_id, tiny_server) -> None:
    variant = goodfire.Variant(model_id)
    context = await client.features.inspect(SYNTHESIZERS, model=variant)
    assert isinstance(context.matrix(), np.ndarray)
    assert all(isinstance(feature, Feature) for feature in context.lookup().values())
    token = context.tokens[-3].inspect()
    assert isinstance(token, FeatureActivations) and isinstance(token.vector(), np.ndarray)
    assert all(isinstance(feature, Feature) for feature in token.lookup().values())

    top_3, top_5 = context.top(k=3), context.top(k=5)
    assert (len(top_3), len(top_5)) == (3, 5)
    assert top_3[0].feature.uuid == top_5[0].feature.uuid
    assert top_3[0].activation == top_5[0].activation
    from_inspect = top_3.lookup()
    assert len(from_inspect) == 3
    looked_up = await client.features.lookup(list(from_inspect), model=variant)
    assert sorted(looked_up) == sorted(from_inspect)
    for index, feature in looked_up.items():
        # The same feature, the same id; only the SDK's types differ (see the next test).
        assert feature.uuid == str(from_inspect[index].uuid)
        assert feature.label == from_inspect[index].label


async def test_lookup_and_inspect_ids_differ_only_in_the_sdk_types(
    client, tiny_server, model_id
) -> None:
    """Why the suite's `lookup(...).uuid == inspect(...).uuid` cannot hold with SDK 0.3.5,
    whatever the server sends: lookup keeps the raw JSON value (a str; JSON has no uuid type),
    while inspect's features come through `/features/`, whose response model parses `id` into
    a `uuid.UUID`; and a str never equals a UUID. The server's two answers agree exactly."""
    async with httpx.AsyncClient(base_url=tiny_server.base_url + API_PREFIX) as http:
        lookup = await http.post("/features/lookup", json={"indices": [7], "model": model_id})
        wire_id = lookup.json()["features"][0]["uuid"]
        listed = await http.get("/features/", params={"feature_id": wire_id})
    assert listed.json()["features"][0]["id"] == wire_id == str(UUID(wire_id))
    from_lookup = (await client.features.lookup([7], model=model_id))[7]
    (from_list,) = await client.features._list([wire_id])
    assert isinstance(from_lookup.uuid, str) and isinstance(from_list.uuid, UUID)
    assert from_lookup.uuid == str(from_list.uuid) and from_lookup.uuid != from_list.uuid


async def test_inspect_with_features_reports_only_those(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    overall = (await client.features.inspect(SYNTHESIZERS, model=variant)).top(k=6)
    others = FeatureGroup([item.feature for item in overall][1:])  # all but the top feature
    restricted = await client.features.inspect(SYNTHESIZERS, model=variant, features=others)
    assert restricted.top(k=1)[0].feature.uuid != overall[0].feature.uuid
    wanted = {feature.index_in_sae for feature in others}
    reported = {index for token in restricted.tokens for index in token.lookup()}
    assert reported == wanted


async def test_inspect_lists_each_feature_once_per_token(tiny_server, model_id) -> None:
    body = {"messages": HELLO, "model": model_id, "include_feature_indexes": [3, 3, 5, 3]}
    async with httpx.AsyncClient(base_url=tiny_server.base_url + API_PREFIX) as http:
        tokens = (await http.post("/chat-attribution/compute-features", json=body)).json()
    for token in tokens["tokens"]:
        assert sorted(a["index_in_sae"] for a in token["attributions"]) == [3, 5]


async def test_feature_group_workflows_on_search_results(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    music = await client.features.search("music", model=variant, top_k=5)
    venues = await client.features.search("venues", model=variant, top_k=5)
    music.add(venues[0])
    music.pop(0)
    music.add(venues[1])
    assert len(music) == 6

    music = await client.features.search("music", model=variant, top_k=5)
    picked = music.pick([0, 4])
    assert [f.uuid for f in picked] == [music[0].uuid, music[4].uuid]
    again = FeatureGroup.from_json(music.json())
    assert [f.uuid for f in again] == [f.uuid for f in music]

    union = music.union(venues)
    assert len(union) == 10
    both = union.pick([0, 1]).union(union.pick([2, 3]))
    assert [f.uuid for f in both] == [union[i].uuid for i in range(4)]
    assert both.pop(0).uuid == union[0].uuid and len(both) == 3


async def test_variant_edit_clear_reset_on_search_results(client, model_id) -> None:
    variant = goodfire.Variant(model_id)
    pirate = await client.features.search("pirate", model=variant)
    variant.set(pirate[0], 0.9)
    variant.set(pirate[1], 0.1)
    variant.set(pirate[2, 5], 0.7)
    assert len(variant.edits) == 4
    variant.clear(pirate[0])
    variant.clear([pirate[2], pirate[5]])
    assert len(variant.edits) == 1
    variant.reset()
    assert len(variant.edits) == 0
