"""Benchmark: what the bot itself adds on top of the model, with 1 to 500 busy channels.

Drives the real core: EmberService through EmberGateway (goodfire SDK paths, pooled httpx),
the SQLite store in a temp dir, and production logging (INFO, written to /dev/null). The
backend is FakeEmber in its own process, so that its work neither runs on the bot's event loop
nor counts as the bot's CPU; it streams 40-token replies paced like a model (first token 200 ms,
then 40 tokens/s) or instantly, and reports how long it spent on each reply. A turn's overhead
is its wall time minus that backend time. `--adapter` also renders every reply through the
adapters' shared StreamingMessage into a sink that accepts posts and edits instantly.

Parts: every channel count with realistic latency and with none (saturation); a burst under the
shipped default settings (rate limits, 8 backend slots, a queue of 200); steering writes through
the service and straight into the store; and the memory of a fresh bot process holding 10,000
stored sessions while 1,000 of them stream at once.

    python -m bench.bot_load [--quick] [--adapter] [--loop asyncio] [--json]

It runs on the event loop the bot runs on (uvloop when installed; `--loop asyncio` forces the
stock loop) and counts the database round trips of a warm turn.

One file on purpose (~770 lines): its parts share the harness (the FakeEmber process, the timed
turn, the CPU accounting) and are read together when a number moves; split, each part would
only be a thin caller of the others.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from adapters.streaming import PlatformLimits, StreamingMessage
from bench.common import (
    describe_machine,
    format_table,
    machine_info,
    peak_rss_mb,
    percentile,
    rss_mb,
)
from bot.app import freeze_startup_objects, open_context
from bot.commands.registry import CommandContext
from bot.domain.errors import EmberBotError, UserInputError
from bot.domain.summary import steering_footer
from bot.domain.types import Actor, FeatureEdit, FeatureRef, SessionKey, VariantState
from bot.ops import event_loop
from bot.ops.logs import configure_logging
from bot.settings import Settings
from bot.usecases.conversation import speaker_line
from storage.store import DEFAULT_VARIANT, Store, StoredMessage
from tests.support.fake_ember import DEFAULT_CATALOG, FakeEmber, Latency
from tests.support.reliability_helpers import loop_watch, relaxed

INSTANT = Latency()
SEA_TEXT = "the ship sailed on across a calm grey sea while all the crew sang"
ADAPTER_LIMITS = PlatformLimits(max_length=2000, edit_interval=1.0)  # Discord's
EDITS = [FeatureEdit(FeatureRef(f.index_in_sae, f.label, f.uuid), 0.3) for f in DEFAULT_CATALOG]
PACKAGES = ("goodfire", "httpx", "h11", "aiohttp", "aiosqlite", "pydantic", "uvloop")


@dataclass(frozen=True)
class Options:
    channels: tuple[int, ...] = (1, 10, 100, 500)
    latency: Latency = Latency(first_token=0.2, tokens_per_second=40)
    reply_tokens: int = 40
    load_seconds: float = 8.0  # per row with realistic latency
    saturation_seconds: float = 4.0  # per row with zero latency
    burst: int = 500  # simultaneous messages under the default settings
    stored: int = 10_000
    active: int = 1_000
    steer_seconds: float = 3.0
    adapter: bool = False
    stock_loop: bool = False  # asyncio's own loop even when uvloop is installed

    @property
    def turn_seconds(self) -> float:
        """What one reply takes the fake: first token, then every further write paced."""
        return self.latency.due(self.reply_tokens + 1)


QUICK = Options(
    load_seconds=3.0,
    saturation_seconds=2.0,
    burst=50,
    stored=1_000,
    active=100,
    steer_seconds=1.0,
)


# --------------------------------------------------------------------------- the fake, remote


def sea_reply(words: int) -> str:
    """A fixed reply of `words` tokens (FakeEmber streams one word per event)."""
    return " ".join(itertools.islice(itertools.cycle(SEA_TEXT.split()), words))


def _serve_fake(control: Connection, reply: str) -> None:
    asyncio.run(_fake_main(control, reply))


async def _fake_main(control: Connection, reply: str) -> None:
    """Serve until told to stop; every command is answered with what was served since the
    last one (last message of each chat request -> seconds) and this process's CPU time."""
    async with FakeEmber(reply_text=reply) as fake:
        control.send((fake.base_url, fake.api_key, fake.model))
        while True:
            try:
                command, argument = await asyncio.to_thread(control.recv)
            except EOFError:
                return
            if command == "stop":
                return
            fake.latency = argument
            served = {
                record.json["messages"][-1]["content"]: seconds
                for record, seconds in fake.served
                if record.path.endswith("/chat/completions")
            }
            fake.requests.clear()
            fake.served.clear()
            control.send((served, time.process_time()))


@dataclass(frozen=True)
class Backend:
    base_url: str
    api_key: str
    model: str


class RemoteFake:
    """FakeEmber in a child process; `exchange(latency)` sets its pace and collects its notes."""

    def __init__(self, reply: str) -> None:
        context = multiprocessing.get_context("forkserver")
        self._control, remote = context.Pipe()
        self._process = context.Process(target=_serve_fake, args=(remote, reply), daemon=True)
        self._process.start()
        if not self._control.poll(60):
            raise RuntimeError("the fake backend did not start")
        self.backend = Backend(*self._control.recv())

    def exchange(self, latency: Latency = INSTANT) -> tuple[dict[str, float], float]:
        """Serve at `latency` from now on; returns (served since the last call, fake CPU s)."""
        self._control.send(("latency", latency))
        return self._control.recv()

    def close(self) -> None:
        self._control.send(("stop", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# --------------------------------------------------------------------------- the bot side


def bench_settings(backend: Backend, database: Path, concurrency: int | None) -> Settings:
    """The shipped defaults when `concurrency` is None; else no rate limits and room for
    `concurrency` backend calls at once (the benchmark's own settings)."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_base_url=backend.base_url,
        goodfire_api_key=SecretStr(backend.api_key),
        ember_model=backend.model,
        database_url=f"sqlite:///{database}",
    )
    if concurrency is None:
        return settings
    return relaxed(settings, backend_max_concurrency=max(concurrency, 8))


@contextmanager
def production_logging() -> Iterator[None]:
    """The bot's own logging (INFO, a line per turn, secrets redacted) into /dev/null: inside
    the benchmark it costs what it costs in the bot."""
    with open(os.devnull, "w") as devnull:
        setup = configure_logging(Settings(_env_file=None), devnull)  # type: ignore[call-arg]
        try:
            yield
        finally:
            setup.close()


class NullSink:
    """A chat platform that takes every post and edit instantly."""

    async def post(self, text: str) -> object:
        return text

    async def edit(self, handle: object, text: str) -> None:
        return None


async def _discard(delta: str) -> None:
    return None


@dataclass
class Turn:
    """One chat turn the service accepted, as the bench timed it."""

    backend_key: str  # the turn's last message as the backend received it
    seconds: float
    warm: bool  # not the channel's first turn (no new session, no new connection)
    error: str | None


@dataclass
class Tally:
    turns: list[Turn] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    longest_queue: int = 0

    async def queued(self, position: int) -> None:
        self.longest_queue = max(self.longest_queue, position)


async def timed_turn(
    ctx: CommandContext, session: SessionKey, actor: Actor, text: str, tally: Tally, adapter: bool
) -> tuple[float, EmberBotError | None]:
    """One turn as an adapter runs it; (wall seconds, the error that cut it short)."""
    started = time.perf_counter()
    if not adapter:
        result = await ctx.service.chat.turn(session, actor, text, _discard, tally.queued)
        return time.perf_counter() - started, result.error
    stream = StreamingMessage(NullSink(), ADAPTER_LIMITS)
    await stream.start()
    result = await ctx.service.chat.turn(session, actor, text, stream.push, tally.queued)
    await stream.finish(footer=steering_footer(result.variant))
    return time.perf_counter() - started, result.error


@dataclass(frozen=True)
class Load:
    channels: int
    latency: Latency
    seconds: float  # channels start turns until this much time has passed
    stagger: float = 0.0  # channel starts are spread evenly over this many seconds
    max_turns: int | None = None  # per channel, refusals included
    shipped_defaults: bool = False


async def channel(
    ctx: CommandContext, number: int, load: Load, until: float, tally: Tally, adapter: bool
) -> None:
    """One channel's user chatting back to back; a refused user waits a second and goes on."""
    session = SessionKey("bench", "load", f"c{number}")
    actor = Actor(f"u{number}", f"User {number}")
    await asyncio.sleep(load.stagger * number / load.channels)
    for turn_number in itertools.islice(itertools.count(), load.max_turns):
        if time.monotonic() >= until:
            return
        text = f"message {turn_number} in channel {number}: what is out there on the sea?"
        try:
            seconds, error = await timed_turn(ctx, session, actor, text, tally, adapter)
        except UserInputError as refusal:
            tally.refused[type(refusal).__name__] += 1
            await asyncio.sleep(1.0)
            continue
        key = speaker_line(StoredMessage("user", actor.display_name, text))
        failure = type(error).__name__ if error else None
        tally.turns.append(Turn(key, seconds, turn_number > 0, failure))


@contextmanager
def cpu_seconds() -> Iterator[list[float]]:
    """This process's CPU time (all threads) spent inside the block, as `[seconds]`."""
    spent: list[float] = []
    started = time.process_time()
    try:
        yield spent
    finally:
        spent.append(time.process_time() - started)


async def run_load(fake: RemoteFake, load: Load, adapter: bool) -> dict[str, Any]:
    _, fake_cpu_before = fake.exchange(load.latency)
    with tempfile.TemporaryDirectory() as tmp:
        concurrency = None if load.shipped_defaults else load.channels
        settings = bench_settings(fake.backend, Path(tmp) / "bot.db", concurrency)
        async with open_context(settings) as ctx:
            freeze_startup_objects()  # as run_app does
            tally = Tally()
            started = time.monotonic()
            with cpu_seconds() as bot_cpu:
                async with loop_watch() as lags:
                    await asyncio.gather(
                        *(
                            channel(ctx, n, load, started + load.seconds, tally, adapter)
                            for n in range(load.channels)
                        )
                    )
            elapsed = time.monotonic() - started
    served, fake_cpu_after = fake.exchange(INSTANT)
    return _load_row(
        load, tally, served, lags, elapsed, bot_cpu[0], fake_cpu_after - fake_cpu_before
    )


async def round_trips_per_turn(fake: RemoteFake, turns: int = 10) -> float:
    """SQL statements per warm chat turn (one channel, instant replies). Every statement is one
    trip to aiosqlite's thread: the store runs one per call, BEGIN and COMMIT included."""
    statements = [0]

    def count(_sql: str) -> None:
        statements[0] += 1

    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(fake.backend, Path(tmp) / "bot.db", 1)
        async with open_context(settings) as ctx:
            session, actor = SessionKey("bench", "trips", "c0"), Actor("u0", "User 0")
            await ctx.service.chat.turn(session, actor, "hello", _discard)  # creates the session
            store = ctx.service._store
            assert isinstance(store, Store), "counts the SQLite store's statements"
            await store._db.set_trace_callback(count)
            for number in range(turns):
                await ctx.service.chat.turn(session, actor, f"message {number}", _discard)
            await store._db.set_trace_callback(None)  # type: ignore[arg-type]
    return statements[0] / turns


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def _load_row(
    load: Load,
    tally: Tally,
    served: dict[str, float],
    lags: list[float],
    elapsed: float,
    bot_cpu: float,
    fake_cpu: float,
) -> dict[str, Any]:
    done = [t for t in tally.turns if t.error is None and t.backend_key in served]
    warm = [t for t in done if t.warm] or done  # rows where every channel ran one turn
    walls = [t.seconds for t in warm]
    backends = [served[t.backend_key] for t in warm]
    overheads = [wall - backend for wall, backend in zip(walls, backends, strict=True)]
    row: dict[str, Any] = {
        "channels": load.channels,
        "turns": len(tally.turns),
        "errors": sum(t.error is not None for t in tally.turns),
        "refused": sum(tally.refused.values()),
        "refused_kinds": dict(tally.refused),
        "longest_queue": tally.longest_queue,
        "turns_per_s": round(len(tally.turns) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "bot_cpu_ms_per_turn": _ms(bot_cpu / max(1, len(tally.turns))),
        "fake_cpu_pct": round(100 * fake_cpu / elapsed, 1),
        "loop_lag_p99_ms": _ms(percentile(lags, 99)) if lags else None,
        "loop_lag_max_ms": _ms(max(lags)) if lags else None,
    }
    if walls:
        row |= {
            "turn_p50_ms": _ms(percentile(walls, 50)),
            "turn_p99_ms": _ms(percentile(walls, 99)),
            "backend_p50_ms": _ms(percentile(backends, 50)),
            "overhead_p50_ms": _ms(percentile(overheads, 50)),
            "overhead_p99_ms": _ms(percentile(overheads, 99)),
            "overhead_pct": round(100 * sum(overheads) / sum(walls), 3),
        }
    return row


# --------------------------------------------------------------------------- steering writes


async def _rate(
    seconds: float, writers: int, write: Callable[[int, int], Awaitable[object]]
) -> dict[str, float]:
    """`writers` tasks calling write(writer, number) back to back for `seconds`."""
    timings: list[float] = []

    async def writer(number: int) -> None:
        for count in itertools.count():
            if time.monotonic() >= until:
                return
            started = time.perf_counter()
            await write(number, count)
            timings.append(time.perf_counter() - started)

    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(writer(n) for n in range(writers)))
    return {
        "writes_per_s": round(len(timings) / (time.monotonic() - started), 1),
        "p50_ms": _ms(percentile(timings, 50)),
        "p99_ms": _ms(percentile(timings, 99)),
    }


async def steering_rates(fake: RemoteFake, seconds: float, writers: int = 10) -> dict[str, Any]:
    """service.steer with `#index` (one loopback lookup, no search) and raw Store.save_variant."""
    fake.exchange(INSTANT)
    actor = Actor("u1", "Steerer")
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(fake.backend, Path(tmp) / "bot.db", writers)
        async with open_context(settings) as ctx:

            def steer(writer: int, count: int) -> Awaitable[object]:
                edit = EDITS[count % 4]  # a few features, values flipping between calls
                value = 0.5 if count % 8 < 4 else -0.3
                session = SessionKey("bench", "steer", f"c{writer}")
                query = f"#{edit.feature.index_in_sae}"
                return ctx.service.steering.steer(session, [(query, value)], actor)

            through_service = await _rate(seconds, writers, steer)
        store = await Store.open(Path(tmp) / "raw.db")
        try:

            def save(writer: int, count: int) -> Awaitable[None]:
                edits = {
                    e.feature.index_in_sae: replace(e, value=count % 10 / 10) for e in EDITS[:4]
                }
                variant = VariantState(DEFAULT_VARIANT, fake.backend.model, edits)
                return store.save_variant(
                    f"raw:{writer}", variant, actor="bench", action="steer", detail={}
                )

            for writer in range(writers):
                await store.ensure_session(f"raw:{writer}", fake.backend.model)
            raw = await _rate(seconds, writers, save)
        finally:
            await store.close()
    return {"writers": writers, "service_steer": through_service, "store_save_variant": raw}


# --------------------------------------------------------------------------- memory


async def seed_sessions(database: Path, count: int, model: str) -> None:
    """`count` sessions as the bot stores them: a variant with three edits, two exchanges."""
    store = await Store.open(database)

    async def seed(number: int) -> None:
        key = f"bench:rss:s{number}"
        await store.ensure_session(key, model)
        edits = {e.feature.index_in_sae: e for e in EDITS[number % 5 : number % 5 + 3]}
        variant = VariantState(DEFAULT_VARIANT, model, edits)
        await store.save_variant(key, variant, actor="seed", action="steer", detail={})
        for exchange in range(2):
            await store.append_message(key, "user", f"question {exchange} about the sea", "User")
            await store.append_message(key, "assistant", sea_reply(40))

    try:
        for start in range(0, count, 200):
            await asyncio.gather(*(seed(n) for n in range(start, min(count, start + 200))))
    finally:
        await store.close()


def _measure_memory(report: Connection, backend: Backend, database: Path, active: int) -> None:
    with production_logging():
        report.send(asyncio.run(_memory_in_fresh_process(backend, database, active)))


async def _memory_in_fresh_process(
    backend: Backend, database: Path, active: int
) -> dict[str, float]:
    """RSS of a fresh bot process: started, with the database open, and at its peak while
    `active` stored sessions each stream a reply at once."""
    started = rss_mb()
    async with open_context(bench_settings(backend, database, active)) as ctx:
        freeze_startup_objects()
        opened = rss_mb()
        tally = Tally()

        async def turn(number: int) -> None:
            session = SessionKey("bench", "rss", f"s{number}")
            actor = Actor(f"u{number}", f"User {number}")
            await timed_turn(ctx, session, actor, "and now?", tally, adapter=True)

        await asyncio.gather(*(turn(n) for n in range(active)))
        after = rss_mb()
    return {
        "rss_started_mb": started,
        "rss_opened_mb": opened,
        "rss_after_mb": after,
        "rss_peak_mb": peak_rss_mb(),
    }


async def memory_use(fake: RemoteFake, options: Options) -> dict[str, Any]:
    fake.exchange(options.latency)
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "bot.db"
        seeding = time.monotonic()
        await seed_sessions(database, options.stored, fake.backend.model)
        seeded = time.monotonic() - seeding
        context = multiprocessing.get_context("forkserver")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_measure_memory, args=(send, fake.backend, database, options.active)
        )
        child.start()
        send.close()  # so that a crashed child ends recv() with EOFError instead of a hang
        memory = await asyncio.to_thread(receive.recv)
        child.join(10)
        database_mb = round(database.stat().st_size / 2**20, 1)
    fake.exchange(INSTANT)
    return {
        "stored_sessions": options.stored,
        "active_sessions": options.active,
        "seed_seconds": round(seeded, 1),
        "database_mb": database_mb,
        **memory,
    }


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    unit: str
    measured: float | None

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "not run"
        return "pass" if self.measured <= self.limit else "miss"


def _row_for(rows: list[dict[str, Any]], channels: int) -> dict[str, Any]:
    return next((row for row in rows if row["channels"] == channels), {})


def evaluate(report: dict[str, Any], options: Options) -> list[Target]:
    """The issue's targets; the memory one only counts at its full 10k stored / 1k active."""
    at_10 = _row_for(report["realistic"], 10)
    at_100 = _row_for(report["realistic"], 100)
    at_500 = _row_for(report["realistic"], 500)
    memory = report["memory"]
    full_memory = options.stored >= 10_000 and options.active >= 1_000
    return [
        Target(
            "bot CPU per streamed turn, 100 channels", 4, "ms", at_100.get("bot_cpu_ms_per_turn")
        ),
        Target(
            "database round trips per warm turn", 4, "", report["database_round_trips_per_turn"]
        ),
        Target("overhead p99, 10 channels", 5, "ms", at_10.get("overhead_p99_ms")),
        Target("overhead p99, 100 channels", 10, "ms", at_100.get("overhead_p99_ms")),
        Target("overhead share of turn time, 100 channels", 1, "%", at_100.get("overhead_pct")),
        Target("loop lag p99, 500 concurrent streams", 20, "ms", at_500.get("loop_lag_p99_ms")),
        Target(
            "peak RSS, 10k stored / 1k active sessions",
            200,
            "MB",
            memory["rss_peak_mb"] if full_memory else None,
        ),
    ]


async def run(options: Options) -> dict[str, Any]:
    fake = RemoteFake(sea_reply(options.reply_tokens))
    try:
        trips = await round_trips_per_turn(fake)
        realistic = [
            await run_load(
                fake,
                Load(n, options.latency, options.load_seconds, stagger=options.turn_seconds),
                options.adapter,
            )
            for n in options.channels
        ]
        saturated = [
            await run_load(fake, Load(n, INSTANT, options.saturation_seconds), options.adapter)
            for n in options.channels
        ]
        burst = Load(options.burst, options.latency, 600, max_turns=1, shipped_defaults=True)
        shipped = await run_load(fake, burst, options.adapter)
        steering = await steering_rates(fake, options.steer_seconds)
        memory = await memory_use(fake, options)
    finally:
        fake.close()
    return {
        "database_round_trips_per_turn": trips,
        "realistic": realistic,
        "zero_latency": saturated,
        "shipped_defaults_burst": shipped,
        "steering": steering,
        "memory": memory,
    }


REALISTIC_COLUMNS = {
    "channels": "channels",
    "turns": "turns",
    "turns_per_s": "turns/s",
    "turn_p50_ms": "turn p50 ms",
    "backend_p50_ms": "backend p50 ms",
    "overhead_p50_ms": "overhead p50 ms",
    "overhead_p99_ms": "overhead p99 ms",
    "overhead_pct": "overhead %",
    "loop_lag_p99_ms": "lag p99 ms",
    "loop_lag_max_ms": "lag max ms",
    "bot_cpu_ms_per_turn": "bot CPU ms/turn",
}
SATURATION_COLUMNS = {
    **{k: v for k, v in REALISTIC_COLUMNS.items() if k not in ("backend_p50_ms", "overhead_pct")},
    "fake_cpu_pct": "fake CPU %",
}
BURST_COLUMNS = {
    "channels": "messages",
    "turns": "replied",
    "refused": "refused",
    "longest_queue": "longest queue",
    "turn_p50_ms": "reply p50 ms",
    "turn_p99_ms": "reply p99 ms",
    "seconds": "all done s",
    "loop_lag_p99_ms": "lag p99 ms",
}
MEMORY_COLUMNS = {
    "stored_sessions": "stored",
    "active_sessions": "active",
    "database_mb": "database MB",
    "rss_started_mb": "RSS started MB",
    "rss_opened_mb": "RSS open MB",
    "rss_peak_mb": "RSS peak MB",
    "rss_after_mb": "RSS after MB",
}


def _columns(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    return format_table(list(columns.values()), [[row.get(k) for k in columns] for row in rows])


def render(report: dict[str, Any]) -> str:
    options, settings = report["options"], report["bot_settings"]
    steering = report["steering"]
    burst = report["shipped_defaults_burst"]
    kinds = ", ".join(f"{n} {kind}" for kind, n in burst["refused_kinds"].items()) or "none"
    sections = [
        f"ember-bot load benchmark (bot side) — {report['command']}",
        f"machine: {describe_machine(report['machine'])}; load average {report['load_average']}",
        f"event loop: {report['event_loop']}; database round trips per warm turn: "
        f"{report['database_round_trips_per_turn']:g}",
        f"backend: FakeEmber in its own process, {options['reply_tokens']}-token replies; "
        f"realistic = first token {options['first_token_ms']} ms, then "
        f"{options['tokens_per_second']} tokens/s",
        f"bot settings: {settings}; adapter rendering {'on' if options['adapter'] else 'off'}",
        f"\nRealistic latency: every channel chats back to back, {options['load_seconds']} s "
        "per row (overhead = turn time - the fake's own time; a channel's first turn, which opens "
        "its session, is left out where it ran more)",
        _columns(report["realistic"], REALISTIC_COLUMNS),
        f"\nZero latency (saturation), {options['saturation_seconds']} s per row",
        _columns(report["zero_latency"], SATURATION_COLUMNS),
        "\nShipped default settings (backend_max_concurrency 8, backend_max_queue 200, rate "
        f"limits on): {burst['channels']} channels send one message at once; refused: {kinds}",
        _columns([burst], BURST_COLUMNS),
        f"\nSteering writes, {steering['writers']} concurrent writers",
        format_table(
            ["path", "writes/s", "p50 ms", "p99 ms"],
            [
                [name, row["writes_per_s"], row["p50_ms"], row["p99_ms"]]
                for name, row in (
                    ('service.steering.steer("#index", v)', steering["service_steer"]),
                    ("Store.save_variant", steering["store_save_variant"]),
                )
            ],
        ),
        "\nMemory: a fresh bot process; every active session streams a reply at once",
        _columns([report["memory"]], MEMORY_COLUMNS),
        "\nTargets",
        format_table(
            ["target", "limit", "measured", "result"],
            [
                [t["name"], f"{t['limit']:g} {t['unit']}", t["measured"], t["verdict"]]
                for t in report["targets"]
            ],
        ),
    ]
    return "\n".join(sections)


def describe(options: Options) -> dict[str, Any]:
    return {
        "channels": list(options.channels),
        "first_token_ms": _ms(options.latency.first_token),
        "tokens_per_second": options.latency.tokens_per_second,
        "reply_tokens": options.reply_tokens,
        "load_seconds": options.load_seconds,
        "saturation_seconds": options.saturation_seconds,
        "burst": options.burst,
        "stored": options.stored,
        "active": options.active,
        "adapter": options.adapter,
        "stock_loop": options.stock_loop,
    }


BOT_SETTINGS = (
    "rate limits off, backend_max_concurrency = channels (at least 8), everything else "
    "default (history 40 messages, backend_max_queue 200); logging INFO to /dev/null"
)


def parse_options(argv: list[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rows; 1k stored/100 active")
    parser.add_argument("--adapter", action="store_true", help="render via StreamingMessage")
    parser.add_argument("--channels", help="comma-separated channel counts (default 1,10,100,500)")
    parser.add_argument("--first-token-ms", type=float, default=200, help="realistic first token")
    parser.add_argument("--tokens-per-second", type=float, default=40, help="realistic pace")
    parser.add_argument("--reply-tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--loop", choices=("auto", "asyncio"), default="auto", help="auto: uvloop when installed"
    )
    args = parser.parse_args(argv)
    options = replace(
        QUICK if args.quick else Options(),
        latency=Latency(args.first_token_ms / 1000, args.tokens_per_second),
        reply_tokens=args.reply_tokens,
        adapter=args.adapter,
        stock_loop=args.loop == "asyncio",
    )
    if args.channels:
        options = replace(options, channels=tuple(int(n) for n in args.channels.split(",")))
    return options, args.json


def measure(options: Options, command: str) -> dict[str, Any]:
    """Run every part; the whole report, as `--json` prints it."""
    load_before = os.getloadavg()[0]
    with production_logging():
        if options.stock_loop:
            results, loop = asyncio.run(run(options)), "asyncio"
        else:
            results, loop = event_loop.run(run(options)), event_loop.loop_name()
    report: dict[str, Any] = {
        "command": command,
        "event_loop": loop,
        "machine": {**machine_info(PACKAGES), "sqlite": sqlite3.sqlite_version},
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "options": describe(options),
        "bot_settings": BOT_SETTINGS,
        **results,
    }
    report["targets"] = [
        {**vars(target), "verdict": target.verdict} for target in evaluate(report, options)
    ]
    return report


def main() -> None:
    options, as_json = parse_options()
    report = measure(options, " ".join(["python -m bench.bot_load", *sys.argv[1:]]))
    print(json.dumps(report) if as_json else render(report))


if __name__ == "__main__":
    main()
