"""Wiring: settings -> store + gateway -> service -> command context, for every adapter.

`run_app(settings, main)` is how an adapter runs for real: the context, the metrics endpoint
(when METRICS_PORT is set), and graceful shutdown on SIGTERM/SIGINT around the adapter's
`main(ctx)` coroutine. Call `bot.ops.logs.configure_logging(settings)` before it, once per process.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic_settings import BaseSettings

from bot.backend.breaker import CircuitBreaker
from bot.backend.gateway import EmberGateway
from bot.backend.retries import RetryPolicy
from bot.commands.catalog import build_registry
from bot.commands.registry import CommandContext
from bot.domain.errors import SetupError, UnauthorizedError
from bot.ops import event_loop
from bot.ops.logs import configure_logging
from bot.ops.metrics import Metrics
from bot.ops.monitoring import MonitoringServer
from bot.settings import Settings
from bot.usecases.service import EmberService
from storage.database import open_database

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[CommandContext]:
    """Open the database and the backend gateway; close both on exit."""
    metrics = Metrics()
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
    metrics.watch_breaker(breaker)
    database = await open_database(
        settings.database_url,
        busy_timeout=settings.database_busy_timeout_seconds,
        pool_size=settings.database_pool_size,
    )
    try:
        async with EmberGateway(
            settings.goodfire_base_url,
            settings.goodfire_api_key.get_secret_value(),
            model=settings.ember_model,
            retry=RetryPolicy(deadline=settings.backend_deadline_seconds),
            breaker=breaker,
            # The service's backend slots bound its calls; the pool must not bind them tighter.
            # A few connections more serve what takes no slot (health checks, the model lookup).
            max_connections=settings.backend_max_concurrency + 4,
        ) as gateway:
            service = EmberService(database, gateway, settings, metrics=metrics)
            async with service.turns.watching():
                yield CommandContext(service, settings, build_registry())
    finally:
        await database.close()


@asynccontextmanager
async def monitoring(ctx: CommandContext) -> AsyncIterator[MonitoringServer | None]:
    """Serve /metrics and /healthz while inside, if METRICS_PORT is set."""
    settings = ctx.settings
    if not settings.metrics_port:
        yield None
        return
    server = MonitoringServer(
        ctx.service.metrics,
        lambda: ctx.service.check_health(settings.health_timeout_seconds),
        settings.metrics_host,
        settings.metrics_port,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def freeze_startup_objects() -> None:
    """Hide what is alive after startup (modules, settings, the command registry: 100k+
    objects that are never garbage) from the garbage collector: a full collection scans every
    tracked object, and under load it stalled the event loop for ~100 ms (bench/bot_load.py)."""
    gc.collect()
    gc.freeze()


async def check_backend(ctx: CommandContext) -> None:
    """At start-up: a backend that rejects our key stops the command (SetupError); one that does
    not answer is only logged, since it may still be loading its model: replies say it is
    unavailable until it answers, and the circuit breaker lets calls through once it does."""
    settings = ctx.settings
    error = await ctx.service.backend_problem(settings.health_timeout_seconds)
    where = settings.goodfire_base_url
    if isinstance(error, UnauthorizedError):
        raise SetupError(f"{where}: {error.user_message}")
    if error is not None:
        log.warning(
            "the model backend at %s does not answer (%s); starting anyway: replies say so "
            "until it does (`ember-bot doctor` checks the setup)",
            where,
            error.user_message,
        )


async def run_app(settings: Settings, main: Callable[[CommandContext], Awaitable[None]]) -> None:
    """Run an adapter until it returns or SIGTERM/SIGINT; then drain, and close everything."""
    log.info("ember-bot starting (event loop: %s)", event_loop.loop_name())
    async with open_context(settings) as ctx, monitoring(ctx):
        await check_backend(ctx)
        freeze_startup_objects()
        lifecycle = ctx.service.lifecycle
        with lifecycle.signal_handlers():
            await lifecycle.run(main(ctx), settings.shutdown_grace_seconds)


def run_blocking(
    settings: Settings,
    work: Coroutine[Any, Any, None],
    *,
    platforms: Sequence[BaseSettings] = (),
    setup_errors: tuple[type[Exception], ...] = (),
    describe: Callable[[BaseException], str] = str,
    interrupted: int = 0,
) -> int:
    """Run `work` with logging configured: the exit status of an `ember-bot` command. The
    secrets in `platforms` (the chat platforms' settings) are redacted like the core's.

    A SetupError (database unusable, backend rejecting the key, a platform unreachable or
    rejecting its token), or one of `setup_errors` (described by `describe`), becomes one line
    on stderr and status 2, never a traceback. Ctrl-C before the signal handlers are installed
    ends quietly with status `interrupted`.
    """
    failures: list[str] = []
    stopped = False
    logging_setup = configure_logging(settings, platforms=platforms)
    try:
        event_loop.run(work)  # uvloop when installed
    except* SetupError as group:
        failures += [str(error) for error in group.exceptions]
    except* setup_errors as group:
        failures += [describe(error) for error in group.exceptions]
    except* KeyboardInterrupt:
        stopped = True
    finally:
        logging_setup.close()
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        return 2
    return interrupted if stopped else 0
