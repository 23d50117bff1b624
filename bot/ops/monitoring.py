"""The monitoring endpoint: Prometheus metrics and a health check, on their own HTTP server.

    GET /metrics  the registry in Prometheus text format
    GET /healthz  200 {"status": "ok", "database": "ok", "backend": "ok"}, or 503 with the
                  failing check's problem in place of "ok" (database not writable, backend
                  not answering)

It is off unless METRICS_PORT is set; bind it to localhost or a private network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.ops.metrics import Metrics

HealthCheck = Callable[[], Awaitable[dict[str, str]]]


class MonitoringServer:
    """The /metrics and /healthz endpoint, on its own aiohttp server."""

    def __init__(self, metrics: Metrics, health: HealthCheck, host: str, port: int) -> None:
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _serve_health(self, request: web.Request) -> web.Response:
        checks = await self._health()
        healthy = all(value == "ok" for value in checks.values())
        return web.json_response(
            {"status": "ok" if healthy else "unhealthy", **checks}, status=200 if healthy else 503
        )
