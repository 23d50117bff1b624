"""The compute-features report as JSON bytes, built without Python work per activation.

A report lists up to 64 features on each of hundreds of tokens. Built as dicts and serialised by
FastAPI (`jsonable_encoder` walks every one, then `json.dumps`), it cost more than the forward
pass on small models (BENCHMARKS.md). Here each reported feature's JSON is written once, and each
token's list is joined from those fragments and its numbers by C-level `map` and `str.join`: the
only Python loop is over tokens. The bytes parse to exactly what the dicts would have given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from server.engine.readouts import TokenActivations

# One attribution: a feature's fragment (its JSON object, still open) and its activation.
_ENTRY = "{}{!r}}}".format


def features_report(
    rows: Sequence[TokenActivations], describe: Callable[[int], dict[str, Any]]
) -> bytes:
    """`{"tokens": [{"token": ..., "attributions": [{...describe(index), "activation_strength":
    value}, ...]}, ...]}` as compact UTF-8 JSON."""
    fragments = _Fragments(describe)
    tokens = []
    for row in rows:
        if row.activations:
            indices, values = zip(*row.activations, strict=True)
            if not math.isfinite(sum(values)):
                raise ValueError("an activation is not a finite number")
            entries = ",".join(map(_ENTRY, map(fragments.__getitem__, indices), values))
        else:
            entries = ""
        tokens.append(f'{{"token":{_compact(row.token)},"attributions":[{entries}]}}')
    return f'{{"tokens":[{",".join(tokens)}]}}'.encode()


class _Fragments(dict[int, str]):
    """A feature's JSON object up to its activation's value, written on first use."""

    def __init__(self, describe: Callable[[int], dict[str, Any]]) -> None:
        super().__init__()
        self._describe = describe

    def __missing__(self, index: int) -> str:
        whole = _compact({**self._describe(index), "activation_strength": 0})
        self[index] = fragment = whole[: -len("0}")]
        return fragment


def _compact(value: Any) -> str:
    """As Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
