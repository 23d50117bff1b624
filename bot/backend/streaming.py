"""`StreamClient`: POST a request and read the response body as it arrives, over pooled
HTTP/1.1 connections (h11 on asyncio protocols). Chat streams use it; the SDK's one-off calls
stay on the pooled httpx client (`bot.backend.http`).

Why not httpx for streams: every read goes through anyio (a cancel scope and a timer armed per
read), which doubled the CPU of a streamed reply (BENCHMARKS.md, "Streaming clients"). Why not
aiohttp: it costs about the same as this client, but its reader raises a broken connection's
error before it hands over bytes it had already received, and only private attributes reach
them.

Here a connection parses bytes into body chunks as they arrive, and a lost connection only marks
the end, so `StreamedResponse.chunks` returns every byte that arrived before it raises. The read
deadline is one watchdog timer per connection, re-armed only when it fires; a read costs no timer.
Transport failures are raised as httpx's exception types, so callers map them like the SDK's.
Connections go straight to the server (TLS with httpx's certificate store); proxy variables such
as HTTPS_PROXY apply to the SDK's calls only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import cast

import h11
import httpx

logger = logging.getLogger(__name__)

_PAUSE_BYTES = 1 << 20  # stop reading from the socket while this much is waiting unread


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: what has arrived of the current response, parsed."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.head: h11.Response | None = None
        self.body: list[bytes] = []
        self.complete = False  # the whole response has arrived
        self.failure: httpx.TransportError | None = None  # why nothing more will arrive
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_read = self._wait_started = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self._timeout = 0.0

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            self.h11.receive_data(data)
            self._parse()
        except h11.RemoteProtocolError as error:
            self._fail(httpx.RemoteProtocolError(str(error)))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None and not self.complete:
            try:
                self.h11.receive_data(b"")
                self._parse()
            except h11.RemoteProtocolError:
                pass
        if not self.complete:
            self._fail(httpx.ReadError("the connection broke off"))
        self._wake()

    # --- the reader's side ----------------------------------------------------------------------

    def start(self, request: Iterable[h11.Event], timeout: float) -> None:
        """Send a request; reads wait at most `timeout` seconds for the next bytes."""
        assert self.transport is not None
        self._timeout = timeout
        self._last_read = self._loop.time()
        self.transport.write(b"".join(self.h11.send(event) or b"" for event in request))

    def take_body(self) -> bytes:
        data = b"".join(self.body)
        self.body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait(self) -> None:
        """Until more arrives, the response ends, or the connection fails (timeouts included)."""
        self._waiter = self._loop.create_future()
        self._wait_started = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._idle_due(), self._check_idle)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def reusable(self) -> bool:
        return (
            self.complete
            and self.failure is None
            and self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
        )

    def reset(self) -> None:
        """Ready for the next request on this connection (after a `reusable` response)."""
        self.h11.start_next_cycle()
        self.head, self.complete = None, False
        self.take_body()  # whatever the last reader left unread
        self._stop_watchdog()

    def close(self) -> None:
        self._stop_watchdog()
        if self.transport is not None:
            self.transport.abort()

    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # --- internals ------------------------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            event = self.h11.next_event()
            kind = type(event)
            if kind is h11.Data:
                self.body.append(event.data)  # type: ignore[union-attr]
                self._buffered += len(event.data)  # type: ignore[union-attr]
            elif kind is h11.Response:
                self.head = event  # type: ignore[assignment]
            elif kind is h11.EndOfMessage:
                self.complete = True
            elif kind is h11.InformationalResponse:
                continue
            else:  # NEED_DATA, PAUSED, ConnectionClosed
                break
        if self._buffered > _PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _fail(self, error: httpx.TransportError) -> None:
        if self.failure is None:
            self.failure = error
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_idle(self) -> None:
        self._watchdog = None
        if self._waiter is None:
            return  # no read is waiting; the next wait arms the watchdog again
        due = self._idle_due()
        if self._loop.time() < due:
            self._watchdog = self._loop.call_at(due, self._check_idle)
            return
        self._fail(httpx.ReadTimeout(f"no data for {self._timeout:.1f} s"))
        self._wake()

    def _idle_due(self) -> float:
        """When the waiting read times out: `_timeout` after the later of the last bytes and
        the start of this wait (a reader that was busy elsewhere is not timed for that)."""
        return max(self._last_read, self._wait_started) + self._timeout

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


class StreamedResponse:
    """A response whose head has arrived; its body is read with `chunks` or `read`."""

    def __init__(self, connection: _Connection) -> None:
        assert connection.head is not None
        self._connection = connection
        self.status_code = connection.head.status_code
        self._raw_headers = connection.head.headers

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers([(bytes(name), bytes(value)) for name, value in self._raw_headers])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Bytes that arrived before a failure come out before it."""
        connection = self._connection
        while True:
            if connection.body:
                yield connection.take_body()
            elif connection.complete:
                return
            elif connection.failure is not None:
                raise connection.failure
            else:
                await connection.wait()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class StreamClient:
    """POSTs to one server whose responses are read as streams; up to `max_connections` at once,
    `max_idle` of them kept open between requests."""

    def __init__(self, base_url: str, *, max_connections: int = 100, max_idle: int = 20) -> None:
        url = httpx.URL(base_url)
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.netloc.decode("ascii")
        self._origin = f"{url.scheme}://{self._authority}"
        self._ssl = httpx.create_ssl_context() if url.scheme == "https" else None
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    @asynccontextmanager
    async def post(
        self, target: str, headers: dict[str, str], body: bytes, wait_seconds: float
    ) -> AsyncIterator[StreamedResponse]:
        """POST `body` to `target` (a path); the response once its head arrives. Connecting, and
        every read, waits at most `wait_seconds`. The connection goes back to the pool only when
        the body was read to its end."""
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", self._authority),
                ("Content-Length", str(len(body))),
                *headers.items(),
            ],
        )
        async with self._slots:
            connection = await self._send(request, body, wait_seconds)
            response = StreamedResponse(connection)
            logger.debug(
                'HTTP Request: POST %s%s "HTTP/1.1 %d"', self._origin, target, response.status_code
            )  # the line httpx writes for the SDK's calls
            try:
                yield response
            finally:
                self._release(connection)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _send(self, request: h11.Request, body: bytes, wait_seconds: float) -> _Connection:
        """The connection `request` went out on, once the response head has arrived; a kept-alive
        connection the server closed before answering is replaced by a new one, once."""
        while True:
            reused = bool(self._idle)
            connection = await self._connection(wait_seconds)
            try:
                connection.start((request, h11.Data(data=body), h11.EndOfMessage()), wait_seconds)
                while connection.head is None and connection.failure is None:
                    await connection.wait()
            except BaseException:  # cancelled while waiting: the connection is mid-request
                connection.close()
                raise
            if connection.head is not None:
                return connection
            connection.close()
            if not reused or isinstance(connection.failure, httpx.TimeoutException):
                assert connection.failure is not None
                raise connection.failure

    async def _connection(self, wait_seconds: float) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.alive():
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(wait_seconds):
                _transport, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {wait_seconds:.1f} s") from None
        except OSError as error:
            raise httpx.ConnectError(str(error)) from None
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable() and len(self._idle) < self._max_idle:
            connection.reset()
            self._idle.append(connection)
        else:
            connection.close()
