"""The unmodified goodfire SDK (and raw HTTP) against the tiny self-hosted server on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import goodfire
import httpx
import numpy as np
import pytest
from goodfire.api.chat.interfaces import ChatCompletion, StreamingChatCompletionChunk
from goodfire.api.exceptions import NotFoundException, RequestFailedException, UnauthorizedException
from goodfire.api.features.client import ContextInspector

from server.api.app import API_PREFIX, create_app
from server.cli import main, serve_in_background, start_background_server
from server.model.presets import TINY_PLANTED

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLANTED_LABEL = next(iter(TINY_PLANTED))
HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture
async def http(tiny_server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tiny_server.base_url + API_PREFIX) as session:
        yield session


async def planted_feature(client: goodfire.AsyncClient, model_id: str) -> goodfire.Feature:
    found = await client.features.search(PLANTED_LABEL, model=model_id, top_k=5)
    assert found[0].label == PLANTED_LABEL
    return found[0]


# ---- every route through the SDK -----------------------------------------------------------


async def test_models_and_health_describe_the_served_pair(tiny_server, tiny_bundle) -> None:
    async with httpx.AsyncClient(base_url=tiny_server.base_url) as session:
        health = (await session.get("/health")).json()
        listing = (await session.get(f"{API_PREFIX}/models")).json()
    assert health == {
        "status": "ok",
        "model": tiny_bundle.model_id,
        "sae": tiny_bundle.sae_id,
        "layer": tiny_bundle.layer,
        "labels": len(tiny_bundle.labels),
        "search": "lexical + activation",
        "engine": "transformers",
    }
    (entry,) = listing["data"]
    assert listing["object"] == "list"
    assert entry["id"] == tiny_bundle.model_id
    assert entry["sae"] == tiny_bundle.sae_id
    assert entry["layer"] == tiny_bundle.layer
    assert entry["d_sae"] == tiny_bundle.sae.W_dec.shape[0]


async def test_search_lookup_and_rerank_return_typed_features(client, model_id) -> None:
    found = await client.features.search(PLANTED_LABEL, model=model_id, top_k=5)
    assert isinstance(found, goodfire.FeatureGroup)
    planted = found[0]
    assert (planted.label, planted.index_in_sae) == (PLANTED_LABEL, TINY_PLANTED[PLANTED_LABEL][0])

    looked_up = await client.features.lookup([planted.index_in_sae, 0], model=model_id)
    assert str(looked_up[planted.index_in_sae].uuid) == str(planted.uuid)
    assert looked_up[0].index_in_sae == 0

    others = await client.features.lookup([1, 2, 3], model=model_id)
    pool = goodfire.FeatureGroup([*others.values(), planted])
    reranked = await client.features.rerank(pool, PLANTED_LABEL, model=model_id, top_k=2)
    assert reranked[0].index_in_sae == planted.index_in_sae
    assert len(reranked) <= 2


async def test_chat_completion_plain_and_streamed_agree(client, model_id) -> None:
    options = dict(max_completion_tokens=12, seed=5, temperature=0.8, system_prompt="")
    plain = await client.chat.completions.create(HELLO, model=model_id, **options)
    chunks = [
        chunk
        async for chunk in await client.chat.completions.create(
            HELLO, model=model_id, stream=True, **options
        )
    ]
    assert isinstance(plain, ChatCompletion)
    assert all(isinstance(chunk, StreamingChatCompletionChunk) for chunk in chunks)
    streamed = "".join(chunk.choices[0].delta.content for chunk in chunks)
    assert streamed == plain.choices[0].message["content"]
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert plain.choices[0].finish_reason in {"stop", "length"}


async def test_inspect_and_activations(client, model_id, tiny_bundle) -> None:
    conversation = [*HELLO, {"role": "assistant", "content": "I am a tiny model."}]
    inspector = await client.features.inspect(conversation, model=model_id)
    assert isinstance(inspector, ContextInspector)
    tokens = await client.features._tokenize(conversation, model=model_id)
    assert [str(token).removeprefix('Token("')[:-2] for token in inspector.tokens] == tokens
    top = inspector.top(3)
    assert 0 < len(top) <= 3
    assert all(isinstance(item.feature, goodfire.Feature) for item in top)

    planted = await planted_feature(client, model_id)
    matrix = await client.features.activations(conversation, model=model_id, features=planted)
    assert isinstance(matrix, np.ndarray)
    assert matrix.shape[0] == len(tokens)
    assert not np.delete(matrix, planted.index_in_sae, axis=1).any()


async def test_compute_features_names_features_as_the_hosted_api_did(
    http, model_id, tiny_bundle
) -> None:
    """Attributions carry id, index_in_sae and activation_strength, strongest first; labels
    come from the feature list route, as the SDK's inspector and the bot fetch them."""
    conversation = [*HELLO, {"role": "assistant", "content": "Ahoy matey, arr!"}]
    response = await http.post(
        "/chat-attribution/compute-features", json={"model": model_id, "messages": conversation}
    )
    tokens = response.raise_for_status().json()["tokens"]
    attributions = [item for token in tokens for item in token["attributions"]]
    assert attributions, "the planted pirate feature fires on this reply"
    for token in tokens:
        strengths = [item["activation_strength"] for item in token["attributions"]]
        assert strengths == sorted(strengths, reverse=True) and all(s > 0 for s in strengths)
        for item in token["attributions"]:
            assert set(item) == {"id", "index_in_sae", "activation_strength"}
    by_id = {item["id"]: item["index_in_sae"] for item in attributions}
    listed = await http.get("/features/", params={"feature_id": list(by_id)[:50]})
    for feature in listed.raise_for_status().json()["features"]:
        assert by_id[feature["id"]] == feature["index_in_sae"]
        assert feature["label"] == tiny_bundle.labels.label(feature["index_in_sae"])


async def test_neighbors_contrast_and_autosteer(client, model_id) -> None:
    planted = await planted_feature(client, model_id)
    neighbors = await client.features.neighbors(planted, model=model_id, top_k=4)
    assert len(neighbors) == 4
    assert planted.index_in_sae not in [f.index_in_sae for f in neighbors]

    plain = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    other = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ahoy matey"}]]
    toward_plain, toward_other = await client.features.contrast(
        plain, other, model=model_id, top_k=3
    )
    assert 0 < len(toward_other) <= 3 and 0 < len(toward_plain) <= 3
    assert not {f.index_in_sae for f in toward_plain} & {f.index_in_sae for f in toward_other}

    edits = await client.features.AutoSteer(PLANTED_LABEL, model=model_id)
    assert isinstance(edits, goodfire.FeatureEdits)
    (first, strength), *_ = edits.as_dict().items()
    assert first.index_in_sae == planted.index_in_sae
    assert 0 < strength <= 1

    conditional = await client.features.AutoConditional(PLANTED_LABEL, model=model_id)
    assert conditional.conditionals[0].left_hand[0].index_in_sae == planted.index_in_sae


async def test_logits_and_attribution(client, model_id) -> None:
    logits = await client.chat.logits(HELLO, model=model_id, top_k=5)
    assert len(logits.logits) <= 5 and logits.logits
    values = list(logits.logits.values())
    assert values == sorted(values, reverse=True)

    chosen = await client.chat.logits(
        HELLO, model=model_id, top_k=2, filter_vocabulary=["hello", "world", "sea"]
    )
    assert set(chosen.logits) <= {"hello", "world", "sea"} and len(chosen.logits) == 2

    reply_so_far = [*HELLO, {"role": "assistant", "content": "I am the"}]
    assert (await client.chat.logits(reply_so_far, model=model_id, top_k=3)).logits

    attribution = await client.features.attribute(HELLO, 2, model=model_id)
    assert attribution.num_input_tokens > 2
    assert attribution.features and all(item.feature is not None for item in attribution.features)


# ---- wire details ----------------------------------------------------------------------------


async def test_stream_sends_one_ascii_event_per_chunk_and_done_alone(http, model_id) -> None:
    body = {
        "messages": [{"role": "user", "content": "Say data: 你好"}],
        "model": model_id,
        "stream": True,
        "max_completion_tokens": 10,
        "seed": 1,
    }
    async with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        received = [chunk async for chunk in response.aiter_raw()]
    assert received[-1] == b"data: [DONE]\n\n"
    indices = []
    for chunk in received[:-1]:
        assert chunk.isascii() and chunk.count(b"data: ") == 1
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        indices.append(json.loads(chunk[6:])["choices"][0]["gf_token_index"])
    assert indices == sorted(set(indices))


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"model": "meta-llama/Meta-Llama-3.1-8B-Instruct"}, 422, "Input should be '"),
        ({"messages": [{"role": "user", "content": "x"}] * 129}, 422, "at most 128 items"),
        ({"temperature": 3}, 422, "less than or equal to 2"),
        ({"messages": [{"role": "user", "content": "sea " * 3000}]}, 422, "reads at most"),
        ({"top_p": 1.5}, 422, "less than or equal to 1"),
        ({"messages": []}, 422, "at least 1 item"),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            422,
            "'system', 'user' or 'assistant'",
        ),
        ({"controller": {"interventions": [{"mode": "shove", "value": 1}]}}, 422, "'nudge'"),
        ({"controller": {"interventions": "all"}}, 422, "valid list"),
        (
            {
                "controller": {
                    "interventions": [
                        {
                            "mode": "nudge",
                            "features": {"features": [{"uuid": "x", "index_in_sae": 10**7}]},
                            "value": 0.5,
                        }
                    ]
                }
            },
            404,
            "Unknown feature index 10000000",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_chat_requests_get_clear_4xx(
    http, model_id, change, status, message, stream
) -> None:
    body = {"messages": HELLO, "model": model_id, "stream": stream, **change}
    response = await http.post("/chat/completions", json=body)
    assert response.status_code == status
    assert message in response.text


TOO_MANY_INDICES = {"feature_indices": list(range(2049))}
TOO_MANY_INCLUDED = {"messages": HELLO, "include_feature_indexes": list(range(513))}
TOO_MANY_CONVERSATIONS = {"dataset_1": [HELLO] * 65, "dataset_2": [HELLO]}
TOKEN_OUT_OF_RANGE = {"messages": HELLO, "startIndex": 1, "endIndex": 9999}


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "message"),
    [
        ("get", "/features/search", {"perPage": 101}, 422, "less than or equal to 100"),
        ("get", "/features/search", {"model": "other"}, 422, "Input should be '"),
        ("get", "/features/", {"feature_id": "0" * 32}, 404, "Unknown feature id"),
        ("get", "/features/", {"feature_id": ["0" * 32] * 51}, 422, "at most 50"),
        ("post", "/features/lookup", {"indices": [10**7]}, 404, "Unknown feature index"),
        ("post", "/features/rerank", {"query": "x", "feature_ids": ["?"]}, 404, "Unknown feature"),
        ("post", "/attributions/neighbors", TOO_MANY_INDICES, 422, "at most 2048"),
        ("post", "/chat-attribution/compute-features", TOO_MANY_INCLUDED, 422, "at most 512"),
        ("post", "/chat-attribution/contrast", TOO_MANY_CONVERSATIONS, 422, "at most 64"),
        ("post", "/attributions/compute-logit-attribution", TOKEN_OUT_OF_RANGE, 422, "endIndex"),
    ],
)
async def test_bad_requests_to_other_routes_get_clear_4xx(
    http, model_id, method, path, payload, status, message
) -> None:
    if method == "get":
        response = await http.get(path, params={"model": model_id, "query": "x", **payload})
    else:
        response = await http.post(path, json={"model": model_id, **payload})
    assert response.status_code == status
    assert message in response.text


async def test_malformed_json_is_a_422_and_the_server_keeps_serving(http, model_id) -> None:
    response = await http.post(
        "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    healthy = await http.post("/chat/tokenize", json={"messages": HELLO, "model": model_id})
    assert healthy.status_code == 200


async def test_sdk_maps_bad_input_to_typed_exceptions(client, model_id) -> None:
    with pytest.raises(RequestFailedException, match="less than or equal to 2"):
        await client.chat.completions.create(HELLO, model=model_id, temperature=3)
    variant = goodfire.Variant(model_id)
    variant.set(goodfire.Feature("0" * 32, "ghost", 10**7), 0.5)
    with pytest.raises(NotFoundException, match="Unknown feature index"):
        await client.chat.completions.create(HELLO, model=variant, system_prompt="")


# ---- api key and responsiveness --------------------------------------------------------------


async def test_api_key_is_required_when_configured(tiny_bundle, model_id) -> None:
    server = await asyncio.to_thread(serve_in_background, create_app(tiny_bundle, api_key="s3cret"))
    try:
        wrong = goodfire.AsyncClient("wrong", base_url=server.base_url)
        with pytest.raises(UnauthorizedException, match="API key"):
            await wrong.features.search("x", model=model_id)
        right = goodfire.AsyncClient("s3cret", base_url=server.base_url)
        assert isinstance(await right.features.search("x", model=model_id), goodfire.FeatureGroup)
        async with httpx.AsyncClient(base_url=server.base_url) as session:
            assert (await session.get("/health")).status_code == 200
            assert (await session.get(f"{API_PREFIX}/models")).status_code == 401
    finally:
        await asyncio.to_thread(server.stop)


async def test_health_answers_quickly_during_generation(http, tiny_server, model_id) -> None:
    chatty = goodfire.Variant(model_id)  # the planted feature keeps the tiny model talking
    chatty.set(goodfire.Feature("", PLANTED_LABEL, TINY_PLANTED[PLANTED_LABEL][0]), 1.0)
    body = {
        "messages": HELLO,
        "model": model_id,
        "stream": True,
        "max_completion_tokens": 200,
        "temperature": 0,  # greedy: the steered reply runs long enough to probe /health
        "controller": chatty.controller.json(),
    }
    under_way = asyncio.Event()

    async def generate() -> None:
        async with http.stream("POST", "/chat/completions", json=body) as response:
            async for _chunk in response.aiter_raw():
                under_way.set()

    generation = asyncio.create_task(generate())
    await under_way.wait()
    latencies = []
    async with httpx.AsyncClient(base_url=tiny_server.base_url) as probe:
        while not generation.done():
            started = time.perf_counter()
            assert (await probe.get("/health")).status_code == 200
            latencies.append(time.perf_counter() - started)
    await generation
    assert len(latencies) >= 3
    # The loop answers between tokens; one scheduler hiccup on a loaded 2-core CI machine
    # must not fail the run, so the typical probe is held to 100 ms and every probe to 500 ms.
    assert statistics.median(latencies) < 0.1 and max(latencies) < 0.5, latencies


# ---- command line and in-process server ------------------------------------------------------


async def served_url(process: asyncio.subprocess.Process) -> str:
    """The address uvicorn reports once the `serve` subprocess listens."""
    assert process.stderr is not None
    while line := await process.stderr.readline():
        if match := re.search(rb"running on (http://\S+)", line):
            return match.group(1).decode()
    raise AssertionError(f"`serve` exited with {await process.wait()} before listening")


async def test_serve_command_runs_the_tiny_preset_behind_an_api_key() -> None:
    serve = "import sys; from server.cli import main; sys.exit(main(sys.argv[1:]))"
    options = ["--preset", "tiny", "--port", "0", "--api-key", "k"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        serve,
        *options,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        base_url = await asyncio.wait_for(served_url(process), timeout=120)
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get(f"{API_PREFIX}/models")).status_code == 401
            models = await http.get(f"{API_PREFIX}/models", headers={"Authorization": "Bearer k"})
        assert models.json()["data"][0]["id"] == "ember-tiny"
    finally:
        process.terminate()
        await process.wait()


def test_serve_command_rejects_incomplete_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--model", "some/model"])
    assert "--model needs --sae" in capsys.readouterr().err


async def test_background_server_serves_a_preset_in_process() -> None:
    server = await asyncio.to_thread(start_background_server, "tiny")
    try:
        client = goodfire.AsyncClient("any-key", base_url=server.base_url)
        found = await client.features.search(PLANTED_LABEL, model="ember-tiny", top_k=1)
        assert found[0].label == PLANTED_LABEL
    finally:
        await asyncio.to_thread(server.stop)
