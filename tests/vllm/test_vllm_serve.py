"""`ember-bot serve --engine vllm` driven by the unmodified goodfire SDK, and its refusals."""

from __future__ import annotations

import goodfire
import httpx
import numpy as np
import pytest
from goodfire.api.chat.interfaces import ChatCompletion, StreamingChatCompletionChunk
from goodfire.api.exceptions import InvalidRequestException

from server.api.app import API_PREFIX
from server.model.presets import TINY_PLANTED

PLANTED_LABEL = next(iter(TINY_PLANTED))
HELLO = [{"role": "user", "content": "Hello, who are you?"}]
GREEDY = {"max_completion_tokens": 24, "temperature": 0, "system_prompt": ""}


@pytest.fixture
def client(vllm_server) -> goodfire.AsyncClient:
    return goodfire.AsyncClient("any-key", base_url=vllm_server.base_url)


def test_start_up_line_and_health_name_the_engine(vllm_server) -> None:
    assert "; vllm engine" in vllm_server.output()
    health = httpx.get(f"{vllm_server.base_url}/health", timeout=30).json()
    assert health["engine"] == "vllm"
    assert (health["model"], health["layer"]) == ("ember-tiny", 1)


async def test_sdk_chats_plain_streamed_and_steered(client, model_id) -> None:
    plain = await client.chat.completions.create(HELLO, model=model_id, **GREEDY)
    assert isinstance(plain, ChatCompletion)
    text = plain.choices[0].message["content"]
    assert text and plain.choices[0].finish_reason in {"stop", "length"}
    chunks = [
        chunk
        async for chunk in await client.chat.completions.create(
            HELLO, model=model_id, stream=True, **GREEDY
        )
    ]
    assert all(isinstance(chunk, StreamingChatCompletionChunk) for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content for chunk in chunks) == text

    (planted, *_) = await client.features.search(PLANTED_LABEL, model=model_id, top_k=3)
    assert planted.label == PLANTED_LABEL
    variant = goodfire.Variant(model_id)
    variant.set(planted, 1.0)
    steered = await client.chat.completions.create(HELLO, model=variant, **GREEDY)
    words = TINY_PLANTED[PLANTED_LABEL][1]
    reply = steered.choices[0].message["content"].lower()
    assert reply != text.lower()
    assert any(word in reply for word in words), reply


async def test_sdk_reads_logits_and_inspects(client, model_id) -> None:
    logits = await client.chat.logits(HELLO, model=model_id, top_k=5)
    values = list(logits.logits.values())
    assert 0 < len(values) <= 5 and values == sorted(values, reverse=True)

    conversation = [*HELLO, {"role": "assistant", "content": "I like the sea and ships."}]
    inspector = await client.features.inspect(conversation, model=model_id)
    tokens = await client.features._tokenize(conversation, model=model_id)
    assert len(inspector.tokens) == len(tokens)
    assert 0 < len(inspector.top(3)) <= 3
    (planted, *_) = await client.features.search(PLANTED_LABEL, model=model_id, top_k=3)
    matrix = await client.features.activations(conversation, model=model_id, features=planted)
    assert isinstance(matrix, np.ndarray) and matrix.shape[0] == len(tokens)
    assert not np.delete(matrix, planted.index_in_sae, axis=1).any()


@pytest.mark.parametrize("stream", [False, True])
async def test_what_the_engine_cannot_do_is_refused_naming_engine_and_feature(
    client, vllm_server, model_id, stream
) -> None:
    scoped = goodfire.Variant(model_id)
    scoped.abort_when(goodfire.Feature("", PLANTED_LABEL, TINY_PLANTED[PLANTED_LABEL][0]) > 0)
    async with httpx.AsyncClient(base_url=vllm_server.base_url + API_PREFIX, timeout=120) as http:
        wire = scoped.controller.json()
        body = {"model": model_id, "messages": HELLO, "stream": stream, "controller": wire}
        response = await http.post("/chat/completions", json=body)
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail.startswith("The vllm engine does not support scopes that end the reply")
        attribution = {"model": model_id, "messages": HELLO, "startIndex": 1, "endIndex": 2}
        response = await http.post("/attributions/compute-logit-attribution", json=attribution)
        assert response.status_code == 400
        assert "vllm engine does not support logit attribution" in response.json()["detail"]
    with pytest.raises(InvalidRequestException, match="abort_when"):
        await client.chat.completions.create(HELLO, model=scoped, **GREEDY)


async def test_a_client_leaving_mid_stream_leaves_the_server_serving(vllm_server, model_id) -> None:
    index = TINY_PLANTED[PLANTED_LABEL][0]
    chatty = {  # the planted nudge keeps the tiny model talking to its budget
        "interventions": [
            {"mode": "nudge", "features": {"features": [{"index_in_sae": index}]}, "value": 1.0}
        ]
    }
    body = {
        "model": model_id,
        "messages": HELLO,
        "stream": True,
        "temperature": 0,
        "max_completion_tokens": 2000,
        "controller": chatty,
    }
    async with httpx.AsyncClient(base_url=vllm_server.base_url + API_PREFIX, timeout=120) as http:
        async with http.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # leave after the first token
        plain = {"model": model_id, "messages": HELLO, "temperature": 0, "max_completion_tokens": 8}
        after = await http.post("/chat/completions", json=plain)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]
