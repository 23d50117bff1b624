"""Batched decoding: the worker's rounds, the left-padded KV batch, and per-request steering and
sampling inside one batch, checked against each request run alone.

Batching changes the float32 arithmetic a little (a row's matmuls run inside a bigger one, and
padded rows attend through a mask), so a row's logits differ from its solo logits by about 1e-6;
`test_batched_rows_decode_like_solo_rows` bounds that by BATCH_TOLERANCE. Each of two logits
moving by at most the bound, a greedy choice can only change when its two best logits are within
twice the bound; so the end-to-end test first checks, on the solo runs, that every greedy choice
wins by more than that, and then asserts exact equality. Sampled streams draw with their own
seeded generator: a draw flips only if it lands within ~1e-6 of a boundary of the cumulative
distribution (odds of about 1e-6 per token).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import goodfire
import httpx
import pytest
import torch
from transformers import LlamaForCausalLM

from server.api.app import API_PREFIX
from server.engine.batching import PaddedBatch, prefill_inputs, row_cache
from server.engine.worker import Batched, InferenceWorker
from server.model.presets import TINY_PLANTED

BATCH_TOLERANCE = 1e-4
# transformers 5.x renamed `past_key_values` to `cache` (as server/engine/hooked_model.py knows)
CACHE = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)
PIRATE, _ = TINY_PLANTED["pirate speech"]
FOOD, _ = TINY_PLANTED["food and cooking"]
CATS, _ = TINY_PLANTED["cats and kittens"]
STORMS, _ = TINY_PLANTED["weather: rain, snow and storms"]
JOY, _ = TINY_PLANTED["happiness and joy"]
CODE, _ = TINY_PLANTED["computers and programming"]


# ---- the worker's rounds ----------------------------------------------------------------------


async def read_all(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def test_worker_runs_every_streams_batched_work_together_and_answers_each() -> None:
    sizes: list[int] = []

    def run_batch(works: list[Any]) -> list[Any]:
        if works:
            sizes.append(len(works))
        return [ValueError("odd") if work == 3 else work * 10 for work in works]

    worker = InferenceWorker(run_batch=run_batch)

    def asks(first: int) -> Generator[Any, Any, None]:
        answer = yield Batched(first)
        answer = yield Batched(answer + 1, ready=(f"got {answer}",))
        yield f"then {answer}"

    # Hold the worker in a call while the three streams arrive, so they share every round.
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait()

    held = asyncio.create_task(worker.call(hold))
    await asyncio.to_thread(holding.wait)
    streams = [worker.stream(asks(first)) for first in (1, 3, 2)]
    release.set()
    await held
    results = await asyncio.gather(*map(read_all, streams), return_exceptions=True)
    worker.close()
    assert results[0] == ["got 10", "then 110"]
    assert isinstance(results[1], ValueError)  # its own result was an error; the others go on
    assert results[2] == ["got 20", "then 210"]
    assert sizes == [3, 2]


async def test_a_batch_that_raises_fails_its_streams_and_the_worker_goes_on() -> None:
    def run_batch(works: list[Any]) -> list[Any]:
        if "boom" in works:
            raise RuntimeError("batch failed")
        return works

    worker = InferenceWorker(run_batch=run_batch)
    closed = []

    def asks(work: str) -> Generator[Any, Any, None]:
        try:
            yield (yield Batched(work))
        finally:
            closed.append(work)

    with pytest.raises(RuntimeError, match="batch failed"):
        await read_all(worker.stream(asks("boom")))
    assert await read_all(worker.stream(asks("fine"))) == ["fine"]
    worker.close()
    assert sorted(closed) == ["boom", "fine"]


# ---- the padded KV batch ----------------------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls run far faster on one intra-op thread (as the server's worker runs them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decode_alone(model: Any, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Next-token logits after the prompt and after each of `tokens`, one sequence alone."""
    cache, logits = row_cache(), []
    with torch.inference_mode():
        for ids in [prompt, *([token] for token in tokens)]:
            output = model(input_ids=torch.tensor([ids]), **{CACHE: cache}, use_cache=True)
            logits.append(output.logits[0, -1])
    return logits


def test_batched_rows_decode_like_solo_rows(tiny_bundle, one_thread) -> None:
    """Rows of different lengths are prefilled together or alone, join at different steps, and
    the longest leaves early; every row's logits (prefill and decode) match its solo run, and
    the padding only the leaver needed is trimmed."""
    model, vocabulary = tiny_bundle.model, tiny_bundle.model.config.vocab_size
    draw = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, vocabulary, (n,), generator=draw).tolist() for n in (7, 30, 12, 3)]
    tokens = [torch.randint(5, vocabulary, (10,), generator=draw).tolist() for _ in prompts]
    solo = [decode_alone(model, p, t) for p, t in zip(prompts, tokens, strict=True)]
    joins_at, leaver, leaves_at = {0: [0, 1], 2: [2], 4: [3]}, 1, 5

    batch: PaddedBatch[int] = PaddedBatch(torch.device("cpu"))
    done: dict[int, int] = {}  # row -> tokens decoded so far
    largest_error = 0.0
    with torch.inference_mode():
        for step in range(16):
            batch.keep(
                [
                    row
                    for row in batch.rows
                    if done[row] < len(tokens[row]) and (row != leaver or step < leaves_at)
                ]
            )
            if step == leaves_at:
                rows_left = batch.rows
                widest = max(len(prompts[row]) + done[row] for row in rows_left)
                assert batch.cache.get_seq_length() == widest < len(prompts[leaver])
            if batch.rows:
                fed = [tokens[row][done[row]] for row in batch.rows]
                output = model(**batch.inputs(fed), **{CACHE: batch.cache}, use_cache=True)
                batch.advance()
                for position, row in enumerate(batch.rows):
                    done[row] += 1
                    error = (output.logits[position, -1] - solo[row][done[row]]).abs().max()
                    largest_error = max(largest_error, float(error))
            if joining := joins_at.get(step):
                inputs, mask = prefill_inputs([prompts[row] for row in joining], batch.device)
                cache = row_cache()
                output = model(**inputs, **{CACHE: cache}, use_cache=True)
                batch.join(joining, cache, mask)
                for position, row in enumerate(joining):
                    done[row] = 0
                    error = (output.logits[position, -1] - solo[row][0]).abs().max()
                    largest_error = max(largest_error, float(error))
    assert largest_error < BATCH_TOLERANCE
    assert done == {0: 10, 1: leaves_at - 1, 2: 10, 3: 10}
    assert batch.rows == [] and rows_left == [0, 2, 3]


# ---- per-request steering and sampling in one batch, end to end ------------------------------


def variant(model_id: str, edits: list[tuple[int, float]]) -> goodfire.Variant:
    steered = goodfire.Variant(model_id)
    for index, value in edits:
        steered.set(goodfire.Feature("", f"feature {index}", index), value)
    return steered


def controller(steering: goodfire.Variant, *edits: tuple[str, int, float]) -> dict[str, Any]:
    """The variant's wire controller plus pin/mul interventions (the SDK only nudges)."""
    wire = steering.controller.json()
    wire["interventions"] += [
        {"mode": mode, "features": {"features": [{"index_in_sae": index}]}, "value": value}
        for mode, index, value in edits
    ]
    return wire


def requests(model_id: str) -> list[dict[str, Any]]:
    """Seven differently steered requests: nudges, a pin, a set_when scope, an abort_when that
    fires, a stop string, several token budgets, greedy and seeded sampling."""
    pirate = goodfire.Feature("", "pirate", PIRATE)
    conditional = variant(model_id, [(PIRATE, 0.6)])
    conditional.set_when(pirate > 2.0, {goodfire.Feature("", "cats", CATS): 1.0})
    aborting = variant(model_id, [(PIRATE, 1.0)])
    aborting.abort_when(pirate > 0)
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [  # the first four use their budget
        (controller(variant(model_id, [(PIRATE, 1.0)])), {"max_completion_tokens": 40}),
        (controller(variant(model_id, [(STORMS, 1.0)])), {}),
        (controller(variant(model_id, []), ("pin", FOOD, 1.2), ("mul", PIRATE, 0.0)), {}),
        (controller(variant(model_id, [(JOY, 1.0)])), {"temperature": 0.8, "seed": 3}),
        (
            controller(variant(model_id, [(CODE, 1.0), (PIRATE, -0.4)])),
            {"temperature": 1.0, "top_p": 0.8, "seed": 11},
        ),
        (controller(conditional), {"max_completion_tokens": 30, "stop": ["whiskers"]}),
        (controller(aborting), {"max_completion_tokens": 20}),
    ]
    return [
        {
            "model": model_id,
            "messages": [{"role": "user", "content": f"Tell me about your day, part {n}."}],
            "stream": True,
            "temperature": 0,
            "max_completion_tokens": 32,
            "controller": wire,
            **options,
        }
        for n, (wire, options) in enumerate(cases)
    ]


async def streamed(
    http: httpx.AsyncClient, body: dict[str, Any], started: asyncio.Event | None = None
) -> tuple[str, str, list[str] | None]:
    """(text, finish reason, event names) of one streamed completion."""
    text, last = "", {}
    async with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                last = json.loads(line.removeprefix("data: "))
                text += last["choices"][0]["delta"]["content"]
                if started is not None:
                    started.set()
    return text, last["choices"][0]["finish_reason"], last["gf_event_names"]


@pytest.fixture
def logits_seen(tiny_bundle) -> Iterator[list[torch.Tensor]]:
    """The next-token logits of every forward pass of the tiny model while the test runs."""
    seen: list[torch.Tensor] = []
    hook = tiny_bundle.model.lm_head.register_forward_hook(
        lambda _module, _args, output: seen.append(output[:, -1].detach().clone())
    )
    yield seen
    hook.remove()


def smallest_greedy_margin(logits: list[torch.Tensor]) -> float:
    top_two = torch.cat(logits).topk(2, dim=-1).values
    return float((top_two[:, 0] - top_two[:, 1]).min())


async def test_concurrent_differently_steered_streams_match_their_solo_runs(
    tiny_server, model_id, logits_seen
) -> None:
    bodies = requests(model_id)
    async with httpx.AsyncClient(base_url=tiny_server.base_url + API_PREFIX) as http:
        alone = []
        for body in bodies:
            alone.append(await streamed(http, body))
            if body["temperature"] == 0:
                margin = smallest_greedy_margin(logits_seen)
                assert margin > 2 * BATCH_TOLERANCE, f"near-tie in {body}: pick another prompt"
            logits_seen.clear()

        # Each request starts once the one before it streams, so rows join a running batch.
        tasks = []
        for body in bodies:
            started = asyncio.Event()
            tasks.append(asyncio.create_task(streamed(http, body, started)))
            waiting = asyncio.create_task(started.wait())
            await asyncio.wait([tasks[-1], waiting], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        together = await asyncio.gather(*tasks)

    assert together == alone
    assert max(len(logits) for logits in logits_seen) >= 4  # rows decoded in one forward pass
    assert len({text for text, _reason, _events in alone}) == len(alone)
    (abort_scope,) = bodies[6]["controller"]["scopes"]
    assert alone[6][1:] == ("abort", [abort_scope["event_name"]])
    assert alone[5][1] == "stop"
