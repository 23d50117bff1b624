"""The compute-features report as JSON bytes, built without Python work per activation.

A report lists up to 64 features on each of hundreds of tokens. Built as dicts and serialised by
FastAPI (`jsonable_encoder` walks every one, then `json.dumps`), it cost more than the SAE read
itself on small models (BENCHMARKS.md). Here each reported feature's JSON object is written
once, up to its value; orjson writes all the values in one call (shortest round-trip floats,
what `json.dumps` would give up to exponent spelling); and the entries are made and joined by
C-level `map` and `bytes.join`. The only Python loop is over tokens. The bytes parse to exactly
what the dicts would have given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import orjson

from server.engine.readouts import TokenActivations


def features_report(
    rows: Sequence[TokenActivations], identify: Callable[[int], dict[str, Any]]
) -> bytes:
    """`{"tokens": [{"token": ..., "attributions": [{...identify(index), "activation_strength":
    value}, ...]}, ...]}` as compact UTF-8 JSON."""
    openings = _Openings(identify)
    pairs = list(chain.from_iterable(row.activations for row in rows))
    entries: list[bytes] = []
    if pairs:
        indices, values = zip(*pairs, strict=True)
        numbers = orjson.dumps(values)[1:-1].split(b",")  # no float is written with a comma
        entries = list(map(bytes.__add__, map(openings.__getitem__, indices), numbers))
    tokens, start = [], 0
    for row in rows:
        token = orjson.dumps(row.token)
        if count := len(row.activations):
            listed = b"},".join(entries[start : start + count])
            tokens.append(b'{"token":%b,"attributions":[%b}]}' % (token, listed))
            start += count
        else:
            tokens.append(b'{"token":%b,"attributions":[]}' % token)
    return b'{"tokens":[%b]}' % b",".join(tokens)


class _Openings(dict[int, bytes]):
    """A feature's JSON object up to its activation's value, written on first use."""

    def __init__(self, identify: Callable[[int], dict[str, Any]]) -> None:
        super().__init__()
        self._identify = identify

    def __missing__(self, index: int) -> bytes:
        whole = orjson.dumps({**self._identify(index), "activation_strength": 0})
        self[index] = opening = whole[: -len(b"0}")]
        return opening
