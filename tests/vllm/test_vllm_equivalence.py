"""The vLLM engine against the transformers engine on the same tiny model, and per-request
isolation inside one vLLM batch."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from server.api.app import API_PREFIX
from server.model.presets import TINY_PLANTED

PLANTED_INDEX = TINY_PLANTED[next(iter(TINY_PLANTED))][0]
OTHER_INDEX = TINY_PLANTED[list(TINY_PLANTED)[1]][0]
ACTIVATION_TOLERANCE = 1e-3  # float32 on both; kernels differ in summation order
TIMEOUT = 120.0  # generous: CI machines are shared


def nudges(*edits: tuple[int, float]) -> dict[str, Any]:
    return {
        "interventions": [
            {"mode": "nudge", "features": {"features": [{"index_in_sae": i}]}, "value": v}
            for i, v in edits
        ]
    }


def chat(model_id: str, content: str, controller: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {
        "model": model_id,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_completion_tokens": 32,
    }
    if controller is not None:
        body["controller"] = controller
    return body


async def reply(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.fixture
async def engines(tiny_server, vllm_server):
    """HTTP sessions on the transformers engine and on the vLLM engine."""
    async with (
        httpx.AsyncClient(
            base_url=tiny_server.base_url + API_PREFIX, timeout=TIMEOUT
        ) as transformers,
        httpx.AsyncClient(base_url=vllm_server.base_url + API_PREFIX, timeout=TIMEOUT) as vllm,
    ):
        yield transformers, vllm


def pinned(mode: str, index: int, value: float) -> dict[str, Any]:
    feature = {"features": [{"index_in_sae": index}]}
    return {"interventions": [{"mode": mode, "features": feature, "value": value}]}


def set_when() -> dict[str, Any]:
    """Nudge OTHER once PLANTED fires on a generated token (a scope without an event)."""
    condition = {
        "left_hand": {"features": [{"index_in_sae": PLANTED_INDEX}]},
        "right_hand": 0.5,
        "operator": ">",
    }
    scope = {
        "conditionals": {"conditionals": [condition], "operator": "AND"},
        "controller": nudges((OTHER_INDEX, 1.0)),
    }
    return {**nudges((PLANTED_INDEX, 0.8)), "scopes": [scope]}


@pytest.mark.parametrize(
    "controller",
    [
        None,
        nudges((PLANTED_INDEX, 1.0)),
        nudges((OTHER_INDEX, 0.6), (PLANTED_INDEX, -0.3)),
        pinned("pin", PLANTED_INDEX, 1.5),
        pinned("mul", PLANTED_INDEX, 0.0),
        set_when(),
    ],
    ids=["plain", "nudged", "two-nudges", "pinned", "multiplied", "set-when"],
)
async def test_greedy_replies_are_the_same_on_both_engines(engines, model_id, controller) -> None:
    transformers, vllm = engines
    body = chat(model_id, "Tell me about your day.", controller)
    expected = await reply(transformers, body)
    assert expected
    assert await reply(vllm, body) == expected


async def test_compute_features_and_logits_agree_across_engines(engines, model_id) -> None:
    transformers, vllm = engines
    conversation = [
        {"role": "user", "content": "Do you like the sea?"},
        {"role": "assistant", "content": "Ships and storms at sea, and cats."},
    ]
    pinned = {
        "interventions": [
            {"mode": "pin", "features": {"features": [{"index_in_sae": OTHER_INDEX}]}, "value": 1}
        ]
    }
    for controller in (None, nudges((PLANTED_INDEX, 0.8)), pinned):
        features = {"model": model_id, "messages": conversation, "aggregate_by": "sum"}
        if controller is not None:
            features["controller"] = controller
        tables = []
        for http in (transformers, vllm):
            response = await http.post("/chat-attribution/compute-features", json=features)
            assert response.status_code == 200, response.text
            tables.append(
                [
                    {a["index_in_sae"]: a["activation_strength"] for a in token["attributions"]}
                    for token in response.json()["tokens"]
                ]
            )
        expected, got = tables
        assert len(expected) == len(got)
        for want, have in zip(expected, got, strict=True):
            shared = want.keys() & have.keys()
            for index in shared:
                assert have[index] == pytest.approx(want[index], abs=ACTIVATION_TOLERANCE)
            for index in want.keys() ^ have.keys():  # a feature at the edge of the top set
                assert abs(want.get(index, have.get(index, 0.0))) < ACTIVATION_TOLERANCE * 10

        logits = {"model": model_id, "messages": conversation, "top_k": 5}
        if controller is not None:
            logits["controller"] = controller
        want_logits = await transformers.post("/chat-attribution/compute-logits", json=logits)
        have_logits = await vllm.post("/chat-attribution/compute-logits", json=logits)
        want, have = want_logits.json()["logits"], have_logits.json()["logits"]
        assert list(have) == list(want)
        assert list(have.values()) == pytest.approx(list(want.values()), abs=1e-3)


async def test_one_batch_keeps_each_request_its_own_steering(engines, model_id) -> None:
    _transformers, vllm = engines
    plain = chat(model_id, "What did you see on the way home?")
    steered = chat(model_id, "What did you see on the way home?", nudges((PLANTED_INDEX, 1.0)))
    alone = await reply(vllm, plain)
    alone_steered = await reply(vllm, steered)
    assert alone_steered != alone
    # Sent together, they run in one continuous batch (with a few more to fill it).
    batch = [plain, steered, plain, steered, chat(model_id, "And then?")]
    together = await asyncio.gather(*(reply(vllm, body) for body in batch))
    assert together[:4] == [alone, alone_steered, alone, alone_steered]


async def test_pins_and_scopes_steer_generation_on_vllm(engines, model_id) -> None:
    _transformers, vllm = engines
    plain = await reply(vllm, chat(model_id, "Tell me about your day."))
    for controller in (pinned("pin", PLANTED_INDEX, 1.5), set_when()):
        assert await reply(vllm, chat(model_id, "Tell me about your day.", controller)) != plain
    # The scope switched on: the same reply without it is another one.
    unscoped = nudges((PLANTED_INDEX, 0.8))
    assert await reply(vllm, chat(model_id, "Tell me about your day.", unscoped)) != await reply(
        vllm, chat(model_id, "Tell me about your day.", set_when())
    )
