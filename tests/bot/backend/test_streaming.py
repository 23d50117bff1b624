"""StreamClient against loopback servers that write raw HTTP/1.1, and the gateway against
FakeEmber: no received byte is lost when a connection breaks, reads time out, connections are
reused only when whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bot.backend.gateway import EmberGateway
from bot.backend.streaming import StreamClient
from bot.domain.errors import BackendUnavailableError
from bot.domain.types import ChatMessage, SamplingOptions
from tests.support.fake_ember import FakeEmber, Fault, tokenize

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head + await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, list[int]]]]]:
    """Start a loopback server running `handler` per connection; (base URL, connections seen)."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, list[int]]:
        connections: list[int] = []

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(len(connections))
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", connections

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_every_byte_that_arrived_before_the_connection_broke_is_returned(serve) -> None:
    sent = asyncio.Event()

    async def cut_mid_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: one\n\n") + chunk(b"data: two\n\n"))
        writer.write(b"20\r\ndata: thr")  # a chunk of 32 bytes, cut after 11
        await writer.drain()
        writer.transport.abort()
        sent.set()

    base_url, _ = await serve(cut_mid_chunk)
    client = StreamClient(base_url)
    received: list[bytes] = []
    with pytest.raises(httpx.ReadError):
        async with client.post("/chat", {}, b"{}", wait_seconds=5) as response:
            async for data in response.chunks():
                received.append(data)
                await sent.wait()  # busy while the rest arrives and the connection breaks
                await asyncio.sleep(0.05)
    assert b"".join(received) == b"data: one\n\ndata: two\n\ndata: thr"
    await client.aclose()


async def test_a_reply_read_after_its_connection_broke_keeps_every_token(
    fake_ember: FakeEmber,
) -> None:
    fake_ember.fail_next("/chat/completions", Fault(die_after_tokens=4))
    parts: list[str] = []
    async with EmberGateway(fake_ember.base_url, fake_ember.api_key) as gateway:
        stream = gateway.stream_chat(
            [ChatMessage("user", "hello there friend")], [], SamplingOptions(max_tokens=50)
        )
        with pytest.raises(BackendUnavailableError):
            async for delta in stream:
                parts.append(delta)
                await asyncio.sleep(0.2)  # a slow platform edit: the rest arrives meanwhile
    assert parts == tokenize("You said: hello there friend")[:4]


async def test_a_server_that_goes_quiet_times_out(serve) -> None:
    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: one\n\n"))
        await asyncio.sleep(5)

    base_url, _ = await serve(quiet)
    client = StreamClient(base_url)
    received: list[bytes] = []
    with pytest.raises(httpx.ReadTimeout):
        async with client.post("/chat", {}, b"{}", wait_seconds=0.3) as response:
            async for data in response.chunks():
                received.append(data)
    assert received == [b"data: one\n\n"]
    await client.aclose()


async def test_a_whole_response_hands_its_connection_back_and_a_cut_one_does_not(serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            request = await read_request(reader)
            writer.write(HEAD + chunk(b"data: ok\n\n"))
            if not request.endswith(b"unfinished"):
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    base_url, connections = await serve(answer)
    client = StreamClient(base_url)
    for _ in range(2):
        async with client.post("/chat", {}, b"{}", wait_seconds=5) as response:
            assert await response.read() == b"data: ok\n\n"
    assert len(connections) == 1
    async with client.post("/chat", {}, b"unfinished", wait_seconds=5) as response:
        chunks = response.chunks()
        assert await anext(chunks) == b"data: ok\n\n"
        await chunks.aclose()  # left before the body ended: that connection is closed
    async with client.post("/chat", {}, b"{}", wait_seconds=5) as response:
        assert await response.read() == b"data: ok\n\n"
    assert len(connections) == 2
    await client.aclose()


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_once(serve) -> None:
    async def answer_once_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: ok\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the next request on this connection is never answered

    base_url, connections = await serve(answer_once_then_drop)
    client = StreamClient(base_url)
    for _ in range(2):
        async with client.post("/chat", {}, b"{}", wait_seconds=5) as response:
            assert await response.read() == b"data: ok\n\n"
    assert len(connections) == 2
    await client.aclose()
