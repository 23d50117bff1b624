"""Steering end to end on the tiny server: the planted feature, abort_when, request isolation."""

from __future__ import annotations

import asyncio
import json

import goodfire
import httpx
import pytest
from goodfire.exceptions import InferenceAbortedException

from server.api.app import API_PREFIX
from server.model.presets import TINY_PLANTED

PLANTED_LABEL = next(iter(TINY_PLANTED))
PLANTED_INDEX, PLANTED_TOKENS = TINY_PLANTED[PLANTED_LABEL]
PROMPT = [{"role": "user", "content": "Tell me about your day."}]


@pytest.fixture
async def planted(client, model_id) -> goodfire.Feature:
    return (await client.features.lookup([PLANTED_INDEX], model=model_id))[PLANTED_INDEX]


def planted_count(text: str) -> int:
    return sum(text.lower().count(token) for token in PLANTED_TOKENS)


async def greedy_reply(client: goodfire.AsyncClient, model: str | goodfire.Variant) -> str:
    reply = await client.chat.completions.create(
        PROMPT, model=model, max_completion_tokens=24, temperature=0, system_prompt=""
    )
    return reply.choices[0].message["content"]


async def test_nudging_the_planted_feature_makes_the_model_say_its_tokens(
    client, model_id, planted
) -> None:
    variant = goodfire.Variant(model_id)
    variant.set(planted, 1.0)
    plain, steered = await greedy_reply(client, model_id), await greedy_reply(client, variant)
    assert planted_count(steered) >= max(8, 4 * planted_count(plain)), (plain, steered)


async def test_inspect_ranks_the_planted_feature_first_on_its_own_tokens(client, model_id) -> None:
    text = " ".join(PLANTED_TOKENS * 6)
    conversation = [*PROMPT, {"role": "assistant", "content": text}]
    inspector = await client.features.inspect(conversation, model=model_id)
    assert inspector.top(5)[0].feature.index_in_sae == PLANTED_INDEX


async def stream_events(base_url: str, body: dict) -> list[dict]:
    """The decoded SSE events of one streamed completion (raw HTTP: the SDK's async stream
    parser crashes on abort events, see docs/ember-api.md §3.5)."""
    async with (
        httpx.AsyncClient(base_url=base_url + API_PREFIX) as http,
        http.stream("POST", "/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_abort_when_stops_the_stream_and_reports_the_event(
    client,
    tiny_server,
    model_id,
    planted,
) -> None:
    variant = goodfire.Variant(model_id)
    variant.set(planted, 1.0)
    body = {"messages": PROMPT, "model": model_id, "stream": True, "max_completion_tokens": 20}
    unguarded = await stream_events(
        tiny_server.base_url, {**body, "controller": variant.controller.json()}
    )

    variant.abort_when(planted > 0)  # the +1 nudge alone lifts it above 0
    (event_name,) = variant._handlers
    guarded = await stream_events(
        tiny_server.base_url, {**body, "controller": variant.controller.json()}
    )

    assert unguarded[-1]["choices"][0]["finish_reason"] in {"length", "stop"}
    assert unguarded[-1]["gf_event_names"] is None
    assert guarded[-1]["choices"][0]["finish_reason"] == "abort"
    assert guarded[-1]["gf_event_names"] == [event_name]
    assert len(guarded) < len(unguarded)

    with pytest.raises(InferenceAbortedException):  # the SDK's own abort handler fires
        await client.chat.completions.create(PROMPT, model=variant, system_prompt="")


async def test_concurrent_streams_with_different_steering_match_their_solo_runs(
    client, model_id, planted
) -> None:
    steered = goodfire.Variant(model_id)
    steered.set(planted, 0.8)
    suppressed = goodfire.Variant(model_id)
    suppressed.set(planted, -0.8)

    async def streamed(model: goodfire.Variant) -> str:
        chunks = await client.chat.completions.create(
            PROMPT,
            model=model,
            stream=True,
            max_completion_tokens=16,
            temperature=1.0,
            seed=11,
            system_prompt="",
        )
        return "".join([chunk.choices[0].delta.content async for chunk in chunks])

    alone = [await streamed(steered), await streamed(suppressed)]
    together = await asyncio.gather(streamed(steered), streamed(suppressed))
    assert together == alone
    assert alone[0] != alone[1]
