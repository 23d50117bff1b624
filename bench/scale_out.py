"""Benchmark: several bot processes on one PostgreSQL database, against one SQLite process.

Each bot process runs the real core (EmberService, EmberGateway, the store chosen by
DATABASE_URL, shared rate limits, production logging) for its share of the channels; every
channel's user chats back to back (bench/bot_load.py's `channel`) for a fixed time. FakeEmber
streams 40-token replies from its own process, paced like a model (first token 200 ms, then 40
tokens/s), and reports how long each reply took it; a turn's overhead is its wall time minus
that. PostgreSQL runs locally (the Debian package's server, started in a temporary folder)
with synchronous_commit=off: SQLite's store runs WAL with synchronous=NORMAL, which does not
wait for the disk per commit either.

Rows: 1, 2 and 3 processes at 100 and 300 channels on PostgreSQL, and one process on SQLite.
CPU per turn is each process's own CPU time over its own turns; the PostgreSQL server's (all
its processes, read from /proc) is reported apart. On a machine with fewer cores than
processes, more processes cannot add throughput, so the CPU per turn is the number that
carries over to bigger machines.

    python -m bench.scale_out [--quick] [--channels 100,300] [--processes 1,2,3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.bot_load import Backend, Load, RemoteFake, Tally, channel, production_logging, sea_reply
from bench.common import describe_machine, format_table, machine_info, percentile
from bot.app import freeze_startup_objects, open_context
from bot.settings import Settings
from tests.support.fake_ember import Latency
from tests.support.postgres_server import LocalServer, find_binaries, new_database

PACKAGES = ("asyncpg", "aiosqlite", "goodfire", "h11", "httpx")
PAGED = Latency(first_token=0.2, tokens_per_second=40)
POSTGRES_OPTIONS = "-c synchronous_commit=off -c max_connections=400 -c listen_addresses=127.0.0.1"
HIGH_LIMIT = {"burst": 1000, "per_minute": 60_000}  # limits on (a bucket per turn), never hit


@dataclass(frozen=True)
class Options:
    channels: tuple[int, ...] = (100, 300)
    processes: tuple[int, ...] = (1, 2, 3)
    seconds: float = 8.0
    reply_tokens: int = 40
    latency: Latency = PAGED


QUICK = Options(seconds=3.0)


def bot_settings(backend: Backend, database_url: str, channels: int) -> Settings:
    limits: dict[str, Any] = {
        f"{kind}_{scope}_{field}": value
        for kind in ("chat", "steer")
        for scope in ("user", "channel")
        for field, value in (
            ("burst", HIGH_LIMIT["burst"]),
            ("per_minute", HIGH_LIMIT["per_minute"]),
        )
    }
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_base_url=backend.base_url,
        goodfire_api_key=SecretStr(backend.api_key),
        ember_model=backend.model,
        database_url=database_url,
        backend_max_concurrency=max(8, channels),
        backend_max_queue=1000,
        **limits,
    )


def _process(report: Connection, settings: Settings, numbers: list[int], load: Load) -> None:
    with production_logging():
        report.send(asyncio.run(_process_main(report, settings, numbers, load)))


async def _process_main(
    report: Connection, settings: Settings, numbers: list[int], load: Load
) -> dict[str, Any]:
    """One bot process: ready, wait for "go", then its channels until `load.seconds` pass."""
    async with open_context(settings) as ctx:
        freeze_startup_objects()
        report.send("ready")
        await asyncio.to_thread(report.recv)
        tally = Tally()
        started, cpu_before = time.monotonic(), time.process_time()
        until = started + load.seconds
        await asyncio.gather(*(channel(ctx, n, load, until, tally, False) for n in numbers))
        cpu = time.process_time() - cpu_before
        elapsed = time.monotonic() - started
    turns = [(t.backend_key, t.seconds) for t in tally.turns if t.error is None and t.warm]
    return {"turns": turns, "all_turns": len(tally.turns), "cpu": cpu, "elapsed": elapsed}


def server_cpu_seconds(server: LocalServer | None) -> float:
    """CPU time of the PostgreSQL server and of its ended backends (the postmaster reaps them,
    so their time is in its cutime/cstime); 0 for SQLite."""
    if server is None:
        return 0.0
    pid = (server.folder / "data" / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_row(
    fake: RemoteFake,
    database_url: str,
    processes: int,
    channels: int,
    options: Options,
    server: LocalServer | None = None,
) -> dict[str, Any]:
    context = multiprocessing.get_context("forkserver")
    pace = options.latency
    load = Load(channels, pace, options.seconds, stagger=pace.due(options.reply_tokens + 1))
    settings = bot_settings(fake.backend, database_url, channels)
    pipes, workers = [], []
    for index in range(processes):
        mine, theirs = context.Pipe()
        numbers = list(range(index, channels, processes))
        worker = context.Process(target=_process, args=(theirs, settings, numbers, load))
        worker.start()
        pipes.append(mine)
        workers.append(worker)
    for pipe in pipes:
        if not pipe.poll(120) or pipe.recv() != "ready":
            raise RuntimeError("a bot process did not start")
    fake.exchange(pace)
    server_cpu = server_cpu_seconds(server)
    for pipe in pipes:
        pipe.send("go")
    results = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join(30)  # their connections close: the backends' CPU time reaches the total
    served, _ = fake.exchange()
    row = summarize(results, served, processes, channels, database_url)
    if server is not None:
        time.sleep(0.5)  # the postmaster reaps the backends
        spent = server_cpu_seconds(server) - server_cpu
        row["database_cpu_ms_per_turn"] = round(1000 * spent / max(1, row["turns"]), 2)
    return row


def summarize(
    results: list[dict[str, Any]],
    served: dict[str, float],
    processes: int,
    channels: int,
    database_url: str,
) -> dict[str, Any]:
    walls = [seconds for r in results for key, seconds in r["turns"] if key in served]
    overheads = [
        seconds - served[key] for r in results for key, seconds in r["turns"] if key in served
    ]
    elapsed = max(r["elapsed"] for r in results)
    turns = sum(r["all_turns"] for r in results)
    return {
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "processes": processes,
        "channels": channels,
        "turns": turns,
        "turns_per_s": round(turns / elapsed, 1),
        "overhead_p50_ms": round(1000 * percentile(overheads, 50), 2),
        "overhead_p99_ms": round(1000 * percentile(overheads, 99), 2),
        "overhead_pct": round(100 * sum(overheads) / sum(walls), 2),
        "cpu_ms_per_turn": [round(1000 * r["cpu"] / max(1, r["all_turns"]), 2) for r in results],
    }


def run(options: Options) -> list[dict[str, Any]]:
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("PostgreSQL server binaries not found: apt-get install postgresql")
    server = LocalServer(binaries, POSTGRES_OPTIONS)
    fake = RemoteFake(sea_reply(options.reply_tokens))
    rows = []
    try:
        server.start()
        with tempfile.TemporaryDirectory() as tmp:
            for channels in options.channels:
                sqlite = f"sqlite:///{Path(tmp) / f'bot-{channels}.db'}"
                rows.append(run_row(fake, sqlite, 1, channels, options))
                for processes in options.processes:
                    url = asyncio.run(new_database(server.url))
                    rows.append(run_row(fake, url, processes, channels, options, server))
    finally:
        fake.close()
        server.stop()
    return rows


COLUMNS = {
    "database": "database",
    "processes": "processes",
    "channels": "channels",
    "turns": "turns",
    "turns_per_s": "turns/s",
    "overhead_p50_ms": "overhead p50 ms",
    "overhead_p99_ms": "overhead p99 ms",
    "overhead_pct": "overhead %",
    "database_cpu_ms_per_turn": "PostgreSQL CPU ms/turn",
    "cpu_ms_per_turn": "CPU ms/turn per process",
}


def render(report: dict[str, Any]) -> str:
    rows = [
        [
            *(row.get(k, "") for k in list(COLUMNS)[:-1]),
            " / ".join(f"{ms:g}" for ms in row["cpu_ms_per_turn"]),
        ]
        for row in report["rows"]
    ]
    return "\n".join(
        [
            f"ember-bot scale-out benchmark — {report['command']}",
            f"machine: {describe_machine(report['machine'])}; load average "
            f"{report['load_average']}",
            f"{report['seconds']} s per row; 40-token replies, first token 200 ms, 40 tokens/s; "
            "PostgreSQL local, synchronous_commit=off",
            format_table(list(COLUMNS.values()), rows),
        ]
    )


def measure(options: Options, command: str) -> dict[str, Any]:
    """Every row; the whole report, as `--json` prints it."""
    load_before = os.getloadavg()[0]
    rows = run(options)
    return {
        "command": command,
        "machine": machine_info(PACKAGES),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds": options.seconds,
        "rows": rows,
    }


def parse_options(argv: list[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per row")
    parser.add_argument("--channels", help="comma-separated channel counts (default 100,300)")
    parser.add_argument("--processes", help="comma-separated process counts (default 1,2,3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    options = QUICK if args.quick else Options()
    if args.channels:
        options = replace(options, channels=tuple(int(n) for n in args.channels.split(",")))
    if args.processes:
        options = replace(options, processes=tuple(int(n) for n in args.processes.split(",")))
    return options, args.json


def main() -> None:
    options, as_json = parse_options()
    report = measure(options, " ".join(["python -m bench.scale_out", *sys.argv[1:]]))
    print(json.dumps(report) if as_json else render(report))


if __name__ == "__main__":
    main()
