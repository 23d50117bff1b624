"""The streamed chat events and the compute-features report: their fast builders write exactly
what the plain dict-and-json.dumps builders would (the report: the same JSON values)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncGenerator

from server.api.chat_reply import ChatReply
from server.api.feature_report import features_report
from server.engine.generation import Finish, TextChunk
from server.engine.readouts import TokenActivations

TEXTS = [
    "plain",
    ' with "quotes" and \\ and data: {"x": 1} and data: [DONE]',
    "Grüße, 世界 🏴\u200d☠️ line\u2028sep\r\n\n\nend\x00",
    "",
]


async def _events() -> AsyncGenerator[TextChunk | Finish, None]:
    for text in TEXTS:
        yield TextChunk(text)
    yield Finish("stop", ("guard",), 5, len(TEXTS))


async def test_streamed_events_are_the_chunks_the_sdk_parses_byte_for_byte() -> None:
    reply = ChatReply("tiny/model data: x", "fp")
    streamed = [event async for event in reply.stream(_events())]
    expected = [reply._event(reply._chunk(i, text, None, None)) for i, text in enumerate(TEXTS)]
    expected.append(reply._event(reply._chunk(len(TEXTS), "", "stop", ["guard"])))
    assert streamed == [*expected, b"data: [DONE]\n\n"]
    for event, text in zip(streamed, TEXTS, strict=False):
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.isascii()
        assert json.loads(event[6:])["choices"][0]["delta"]["content"] == text


def describe(index: int) -> dict[str, object]:
    return {"id": f"uuid-{index}", "label": f'label "{index}" — ü', "index_in_sae": index}


def test_the_features_report_is_the_json_of_the_dicts() -> None:
    rows = [
        TokenActivations("<|start|>", []),
        TokenActivations(" cat", [(7, 2.5), (3, 0.1 + 0.2), (12, 1e-9)]),
        TokenActivations(' "ü"\n', [(3, 0.0), (7, -0.0)]),
        TokenActivations(
            "x", [(index, random.Random(index).uniform(0, 50)) for index in range(40)]
        ),
        TokenActivations("tiny", [(1, 5e-324), (2, 1.7976931348623157e308), (4, 1e16), (5, 123.0)]),
    ]
    as_dicts = {
        "tokens": [
            {
                "token": row.token,
                "attributions": [
                    {**describe(index), "activation_strength": value}
                    for index, value in row.activations
                ],
            }
            for row in rows
        ]
    }
    report = features_report(rows, describe)
    assert json.loads(report) == as_dicts  # every float parses back to exactly the same value
    assert 'label \\"7\\" — ü'.encode() in report, "compact UTF-8, not ASCII escapes"
    assert b": " not in report and b", " not in report
