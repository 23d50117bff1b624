"""EmberGateway through the real goodfire SDK and httpx against the loopback FakeEmber."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from uuid import UUID

import goodfire
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.backend.gateway import FALLBACK_MODEL, EmberGateway
from bot.backend.http import PooledHTTP
from bot.backend.retries import RetryPolicy
from bot.backend.sse import SSEDecoder
from bot.domain.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GenerationAbortedError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    RateLimitedError,
    UnauthorizedError,
)
from bot.domain.types import ChatMessage, FeatureEdit, FeatureRef, SamplingOptions
from tests.support.fake_ember import FakeEmber, Fault, tokenize
from tests.support.reliability_helpers import loop_watch

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "hello there")]
SAMPLING = SamplingOptions(max_tokens=200)
# Model text that breaks naive SSE parsers: "data: " and [DONE] inside the text, blank lines,
# multi-byte characters (2, 3 and 4 bytes, a ZWJ sequence) and Unicode line separators.
TRICKY = (
    'Arr! He typed "data: {\\"x\\": 1}" then data: [DONE]\n\ndata: ok — Grüße, 世界 '
    "🏴\u200d☠️ line\u2028sep\x85nel\r\nend "
)


@pytest.fixture
async def gateway(fake_ember: FakeEmber) -> AsyncIterator[EmberGateway]:
    async with EmberGateway(fake_ember.base_url, fake_ember.api_key, retry=FAST) as gateway:
        yield gateway


async def collect(gateway: EmberGateway, parts: list[str], **kwargs: object) -> str:
    """Stream a reply into `parts` (so a caller still sees them after an error)."""
    edits = kwargs.pop("edits", [])
    messages = kwargs.pop("messages", HELLO)
    sampling = kwargs.pop("sampling", SAMPLING)
    async for delta in gateway.stream_chat(messages, edits, sampling):  # type: ignore[arg-type]
        parts.append(delta)
    return "".join(parts)


def pirate(fake: FakeEmber, uuid: str | None = None) -> FeatureRef:
    feature = fake.feature("pirate speech")
    return FeatureRef(feature.index_in_sae, feature.label, uuid or feature.uuid)


# --------------------------------------------------------------------------- model id


async def test_model_id_is_asked_of_the_server_once(fake_ember: FakeEmber) -> None:
    fake_ember.model = "tiny/test-model"
    async with EmberGateway(fake_ember.base_url, fake_ember.api_key, retry=FAST) as gateway:
        assert await gateway.model_id() == "tiny/test-model"
        assert await gateway.model_id() == "tiny/test-model"
        await gateway.search_features("cats")
    assert len(fake_ember.requests_to("/models")) == 1
    assert fake_ember.requests_to("/features/search")[0].query["model"] == "tiny/test-model"


async def test_model_id_falls_back_when_the_server_has_no_models_route(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.serves_models_route = False
    assert await gateway.model_id() == FALLBACK_MODEL


async def test_configured_model_is_used_without_asking(fake_ember: FakeEmber) -> None:
    async with EmberGateway(fake_ember.base_url, fake_ember.api_key, model="x/y") as gateway:
        assert await gateway.model_id() == "x/y"
    assert fake_ember.requests_to("/models") == []


# --------------------------------------------------------------------------- features


async def test_search_returns_features_with_hyphenated_uuids(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    found = await gateway.search_features("pirate", top_k=5)
    assert [f.label for f in found] == ["pirate speech", "talking like a pirate (nautical terms)"]
    assert found[0] == pirate(fake_ember)
    request = fake_ember.requests_to("/features/search")[0]
    assert (request.query["query"], request.query["perPage"]) == ("pirate", "5")


async def test_lookup_keeps_the_order_asked_and_skips_unknown_indices(
    gateway: EmberGateway,
) -> None:
    found = await gateway.lookup_features([3001, 65000, 1201])
    assert [(f.index_in_sae, f.label) for f in found] == [(3001, "cats"), (1201, "pirate speech")]
    assert all(str(UUID(f.uuid)) == f.uuid for f in found)


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("max", ["pirate speech", "cats"]), ("count", ["cats", "pirate speech"])],
)
async def test_inspect_ranks_by_the_chosen_aggregate(
    fake_ember: FakeEmber, gateway: EmberGateway, aggregate: str, expected: list[str]
) -> None:
    # "cats" fires three times weakly (0.6), "pirate speech" once strongly (2.0).
    exchange = [
        ChatMessage("user", "my cat, your cat and their cat"),
        ChatMessage("assistant", "Arr, a pirate!"),
    ]
    top = await gateway.inspect(exchange, [], top_k=2, aggregate=aggregate)  # type: ignore[arg-type]
    assert [a.feature.label for a in top] == expected
    labels_request = fake_ember.requests_to("/features/")[-1]
    assert len(labels_request.query.getall("feature_id")) == 2  # labels fetched for the top only


async def test_inspect_reports_aggregate_values_and_sends_the_variant(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    exchange = [ChatMessage("user", "cat cat"), ChatMessage("assistant", "pirate")]
    top = await gateway.inspect(exchange, [FeatureEdit(pirate(fake_ember), -0.3)], aggregate="sum")
    assert {a.feature.index_in_sae: a.activation for a in top} == {1201: 2.0, 3001: 1.2}
    request = fake_ember.requests_to("/compute-features")[0]
    assert request.json["aggregate_by"] == "sum"
    assert fake_ember.controller_nudges(request) == {1201: -0.3}


# --------------------------------------------------------------------------- chat streaming


async def test_stream_sends_our_messages_the_variant_and_a_fresh_seed(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    edits = [FeatureEdit(pirate(fake_ember), 0.5)]
    assert await collect(gateway, [], edits=edits) == "You said: hello there"
    await collect(gateway, [], edits=edits)
    first, second = fake_ember.requests_to("/chat/completions")
    assert first.json["messages"] == [m.as_wire() for m in HELLO]  # no SDK default prompt
    assert first.json["stream"] is True
    assert fake_ember.controller_nudges(first) == {1201: 0.5}
    assert first.json["seed"] != second.json["seed"]
    await collect(gateway, [], sampling=SamplingOptions(seed=7))
    assert fake_ember.last_chat_request().json["seed"] == 7


async def test_stream_prepends_the_gateway_system_prompt_only_when_missing(
    fake_ember: FakeEmber,
) -> None:
    async with EmberGateway(
        fake_ember.base_url, fake_ember.api_key, system_prompt="Talk like a pirate."
    ) as gateway:
        await collect(gateway, [], messages=[ChatMessage("user", "hi")])
    assert fake_ember.last_chat_request().json["messages"] == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "hi"},
    ]


async def test_the_same_feature_set_twice_leaves_exactly_one_edit(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    from_search = (await gateway.search_features("pirate"))[0]
    reloaded = pirate(fake_ember, uuid=UUID(from_search.uuid).hex)  # str uuid, other spelling
    # The SDK alone keeps both (docs/ember-api.md §3.7); the gateway keys edits by index_in_sae.
    sdk_variant = goodfire.Variant(fake_ember.model)  # type: ignore[arg-type]
    sdk_variant.set(goodfire.Feature(UUID(from_search.uuid), "pirate speech", 1201), 0.3)
    sdk_variant.set(goodfire.Feature(reloaded.uuid, "pirate speech", 1201), 0.5)  # type: ignore[arg-type]
    assert len(sdk_variant.edits) == 2

    edits = [FeatureEdit(from_search, 0.3), FeatureEdit(reloaded, 0.5)]
    await collect(gateway, [], edits=edits)
    request = fake_ember.last_chat_request()
    assert len(fake_ember.controller_interventions(request)) == 1
    assert fake_ember.controller_nudges(request) == {1201: 0.5}


@pytest.mark.parametrize(
    "fault",
    [
        Fault(chunk_size=7),  # events split across reads
        Fault(chunk_size=1),  # every multi-byte character split across reads
        Fault(coalesce=True),  # all events and [DONE] in one read
        Fault(crlf=True, chunk_size=3),  # CRLF, with CR and LF in different reads
        Fault(keep_alive=True, chunk_size=5),  # ": keep-alive" comments
        Fault(repeat_events=True),  # duplicate gf_token_index
        Fault(crlf=True, keep_alive=True, coalesce=True),
    ],
    ids=["split", "bytewise", "coalesced", "crlf", "keep-alive", "duplicates", "crlf-coalesced"],
)
async def test_stream_yields_the_reply_byte_for_byte(
    fake_ember: FakeEmber, gateway: EmberGateway, fault: Fault
) -> None:
    fake_ember.reply_text = TRICKY
    fake_ember.fail_next("/chat/completions", fault)
    assert (await collect(gateway, [])).encode() == TRICKY.encode()


def sse_body(events: list[str], newline: str) -> bytes:
    return "".join(f"data: {e}{newline}: ping{newline}{newline}" for e in events).encode()


@given(
    events=st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1
        ),
        max_size=6,
    ),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_sse_decoder_is_independent_of_how_reads_are_cut(
    events: list[str], newline: str, cuts: list[int]
) -> None:
    body = sse_body(events, newline)
    bounds = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    decoder = SSEDecoder()
    decoded = [d for a, b in zip(bounds, bounds[1:], strict=False) for d in decoder.feed(body[a:b])]
    assert decoded + decoder.close() == events


async def test_stream_that_dies_halfway_keeps_the_partial_text(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.fail_next("/chat/completions", Fault(die_after_tokens=3))
    parts: list[str] = []
    with pytest.raises(BackendUnavailableError):
        await collect(gateway, parts)
    assert parts == tokenize("You said: hello there")[:3]
    assert len(fake_ember.requests_to("/chat/completions")) == 1  # never posted twice


async def test_a_server_holding_the_body_open_after_done_does_not_hold_the_reply(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.fail_next("/chat/completions", Fault(hold_open=600))
    reply = await asyncio.wait_for(collect(gateway, []), 30)  # a hang guard, not a speed test
    assert reply == "You said: hello there"
    connections = fake_ember.connection_count
    assert await collect(gateway, []) == "You said: hello there"
    assert fake_ember.connection_count == connections + 1  # the lingering one was not reused


@pytest.mark.parametrize(
    "fault", [Fault(status=503), Fault(die_after_tokens=0), Fault(status=429, retry_after=0.05)]
)
async def test_stream_is_retried_while_nothing_was_yielded(
    fake_ember: FakeEmber, gateway: EmberGateway, fault: Fault
) -> None:
    fake_ember.fail_next("/chat/completions", fault)
    assert await collect(gateway, []) == "You said: hello there"
    assert len(fake_ember.requests_to("/chat/completions")) == 2


async def test_guard_event_stops_generation_after_yielding_what_came(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.fail_next("/chat/completions", Fault(abort_after_tokens=2))
    parts: list[str] = []
    with pytest.raises(GenerationAbortedError):
        await collect(gateway, parts)
    assert "".join(parts) == "You said: "


# --------------------------------------------------------------------------- errors


async def test_validation_errors_show_the_server_message(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    too_many = [HELLO[0], *(ChatMessage("user", f"message {i}") for i in range(128))]
    with pytest.raises(InvalidRequestError) as chat_error:
        await collect(gateway, [], messages=too_many)
    assert chat_error.value.detail == (
        "messages: List should have at most 128 items after validation, not 129"
    )
    with pytest.raises(InvalidRequestError) as sampling_error:
        await collect(gateway, [], sampling=SamplingOptions(temperature=3))
    assert sampling_error.value.detail == "temperature: Input should be less than or equal to 2"
    with pytest.raises(InvalidRequestError) as search_error:
        await gateway.search_features("pirate", top_k=101)
    assert search_error.value.detail == "perPage: Input should be less than or equal to 100"
    assert len(fake_ember.requests_to("/chat/completions")) == 2  # 422 is never retried


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, InvalidRequestError),
        (401, UnauthorizedError),
        (402, OutOfCreditsError),
        (403, UnauthorizedError),
        (404, NotFoundError),
        (500, BackendUnavailableError),
    ],
)
@pytest.mark.parametrize("call", ["search", "stream"])
async def test_http_errors_map_to_the_taxonomy_without_leaking_the_key(
    fake_ember: FakeEmber,
    gateway: EmberGateway,
    caplog: pytest.LogCaptureFixture,
    status: int,
    error_type: type[BackendError],
    call: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = "/features/search" if call == "search" else "/chat/completions"
    fake_ember.fail_next(path, *[Fault(status=status)] * FAST.attempts)
    with pytest.raises(error_type) as raised:
        if call == "search":
            await gateway.search_features("pirate")
        else:
            await collect(gateway, [])
    assert fake_ember.api_key not in raised.value.user_message
    assert fake_ember.api_key not in caplog.text
    expected_attempts = FAST.attempts if status >= 500 else 1
    assert len(fake_ember.requests_to(path)) == expected_attempts


async def test_a_wrong_api_key_is_unauthorized(fake_ember: FakeEmber) -> None:
    async with EmberGateway(fake_ember.base_url, "not-the-key", model="m") as gateway:
        with pytest.raises(UnauthorizedError):
            await gateway.search_features("pirate")


async def test_unreadable_success_replies_are_backend_errors(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.fail_next("/features/search", Fault(status=200, body="<html>maintenance</html>"))
    with pytest.raises(BackendUnavailableError, match="unexpected reply"):
        await gateway.search_features("pirate")
    fake_ember.fail_next("/chat/completions", *[Fault(status=200, body="<html>")] * FAST.attempts)
    with pytest.raises(BackendUnavailableError, match="ended early"):
        await collect(gateway, [])


async def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with EmberGateway(f"http://127.0.0.1:{port}", "key", model="m", retry=FAST) as gateway:
        with pytest.raises(BackendUnavailableError, match="cannot connect"):
            await gateway.search_features("pirate")


# --------------------------------------------------------------------------- rate limits, timeouts


@pytest.mark.parametrize("call", ["search", "stream"])
async def test_five_429s_back_off_without_stalling_the_loop(
    fake_ember: FakeEmber, call: str
) -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.02, max_delay=0.1, deadline=10)
    path = "/features/search" if call == "search" else "/chat/completions"
    fake_ember.fail_next(path, *[Fault(status=429)] * 5)
    async with (
        EmberGateway(fake_ember.base_url, fake_ember.api_key, retry=policy) as gateway,
        loop_watch() as stalls,
    ):
        if call == "search":
            assert (await gateway.search_features("pirate"))[0].label == "pirate speech"
        else:
            assert await collect(gateway, []) == "You said: hello there"
    assert len(fake_ember.requests_to(path)) == 6
    assert max(stalls) < 0.05


async def test_persistent_429s_end_in_a_rate_limit_error_with_a_retry_hint(
    fake_ember: FakeEmber,
) -> None:
    fake_ember.fail_next("/features/search", *[Fault(status=429)] * 5)
    async with (
        EmberGateway(fake_ember.base_url, fake_ember.api_key, retry=FAST) as gateway,
        loop_watch() as stalls,
    ):
        with pytest.raises(RateLimitedError) as raised:
            await gateway.search_features("pirate")
    assert raised.value.retry_after is not None
    assert "try again in" in raised.value.user_message
    assert len(fake_ember.requests_to("/features/search")) == FAST.attempts
    assert max(stalls) < 0.05


async def test_retry_after_is_honoured(fake_ember: FakeEmber, gateway: EmberGateway) -> None:
    fake_ember.fail_next("/features/search", Fault(status=429, retry_after=0.3))
    started = time.monotonic()
    await gateway.search_features("pirate")
    assert time.monotonic() - started >= 0.3


async def test_retry_after_beyond_the_deadline_fails_fast_with_that_hint(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    fake_ember.fail_next("/features/search", Fault(status=429, retry_after=60))
    with pytest.raises(RateLimitedError) as raised:
        await gateway.search_features("pirate")
    assert raised.value.retry_after == 60
    assert "try again in 60 s" in raised.value.user_message
    assert len(fake_ember.requests_to("/features/search")) == 1


@pytest.mark.parametrize("call", ["search", "stream"])
async def test_a_slow_backend_times_out_at_the_deadline(fake_ember: FakeEmber, call: str) -> None:
    policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=0.4)
    path = "/features/search" if call == "search" else "/chat/completions"
    fake_ember.fail_next(path, *[Fault(delay=3.0)] * 4)
    started = time.monotonic()
    async with EmberGateway(
        fake_ember.base_url, fake_ember.api_key, model=fake_ember.model, retry=policy
    ) as gateway:
        with pytest.raises(BackendTimeoutError):
            if call == "search":
                await gateway.search_features("pirate")
            else:
                await collect(gateway, [])
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------- the shared client


async def test_sdk_calls_and_streams_each_reuse_one_pooled_connection(
    fake_ember: FakeEmber, gateway: EmberGateway
) -> None:
    sdk = gateway._sdk
    assert all(
        isinstance(api._http, PooledHTTP) for api in (sdk.features, sdk.chat, sdk.chat.completions)
    )
    for _ in range(10):
        await gateway.search_features("cats")
    await gateway.inspect([ChatMessage("user", "cat")], [])
    await collect(gateway, [])
    await collect(gateway, [])  # a finished stream hands its connection back to the pool
    await gateway.search_features("cats")
    assert len(fake_ember.requests) == 16  # models + 11 searches + inspect (2) + 2 chats
    # One kept-alive connection for the SDK's calls (httpx), one for the chat streams.
    assert fake_ember.connection_count == 2


async def test_the_stock_sdk_opens_a_connection_per_request(fake_ember: FakeEmber) -> None:
    client = goodfire.AsyncClient(fake_ember.api_key, base_url=fake_ember.base_url)
    for _ in range(3):
        await client.features.search("cats", model=fake_ember.model)  # type: ignore[arg-type]
    assert fake_ember.connection_count == 3
