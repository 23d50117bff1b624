"""Benchmark: sequential feature searches through EmberGateway vs the stock goodfire client.

Both run against the loopback FakeEmber in the same process, so the difference is the client
side: the stock SDK builds a new httpx.AsyncClient (and SSL context) per request, the gateway
reuses one pooled client.

    python -m bench.ember_client [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import goodfire

from bench.common import format_table, summary_ms
from bot.backend.gateway import EmberGateway
from tests.support.fake_ember import FakeEmber

Search = Callable[[], Awaitable[object]]


async def _timings(search: Search, calls: int) -> list[float]:
    await search()  # warm-up: connection, model id, imports
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        await search()
        timings.append(time.perf_counter() - started)
    return timings


def _summary(timings: list[float]) -> dict[str, float]:
    return {**summary_ms(timings), "calls_per_s": round(len(timings) / sum(timings), 1)}


async def run(calls: int) -> dict[str, dict[str, float]]:
    async with FakeEmber() as fake:
        async with EmberGateway(fake.base_url, fake.api_key) as gateway:
            ours = await _timings(lambda: gateway.search_features("pirate"), calls)
        stock = goodfire.AsyncClient(fake.api_key, base_url=fake.base_url)
        theirs = await _timings(
            lambda: stock.features.search("pirate", model=fake.model, top_k=20),  # type: ignore[arg-type]
            calls,
        )
    return {"ember_gateway": _summary(ours), "goodfire_sdk": _summary(theirs)}


def _table(results: dict[str, dict[str, float]]) -> str:
    columns = ["p50_ms", "p90_ms", "p99_ms", "calls_per_s"]
    return format_table(
        ["client", *columns], [[name, *(row[c] for c in columns)] for name, row in results.items()]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="sequential searches per client")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = asyncio.run(run(args.calls))
    if args.json:
        print(json.dumps({"calls": args.calls, **results}))
    else:
        print(f"{args.calls} sequential feature searches on loopback\n{_table(results)}")


if __name__ == "__main__":
    main()
