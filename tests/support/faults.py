"""Helpers for fault tests: a realistic Discord token, a closed port, a server that refuses every
token, damaged weights files, and a before/after snapshot of files that must stay as they were."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import zipfile
from pathlib import Path

from aiohttp import web

from tests.support.fake_discord import APPLICATION_ID


def bot_token(application_id: int = APPLICATION_ID) -> str:
    """Shaped like a Discord bot token: the application id in base64, a timestamp, an HMAC."""
    first = base64.b64encode(str(application_id).encode()).decode().rstrip("=")
    return f"{first}.GaBcDe.{'x' * 38}"


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RejectingServer:
    """An HTTP server answering 401 to every request, as Discord does to a revoked token;
    `async with RejectingServer() as api_base:`."""

    async def __aenter__(self) -> str:
        async def unauthorized(request: web.Request) -> web.Response:
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", unauthorized)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}/api/v10"

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def truncated_npz() -> bytes:
    """The first half of a NumPy .npz archive: its directory, at the end, is gone."""
    whole = zip_bytes({"W_enc.npy": b"\x93NUMPY" + b"\0" * 400})
    return whole[: len(whole) // 2]


def truncated_pth() -> bytes:
    """The start of a PyTorch (zip format) state dict."""
    return zip_bytes({"sae/data.pkl": b"\x80\x02}q\x00." * 40})[:300]


def truncated_safetensors() -> bytes:
    """A .safetensors file whose tensor data stops short of what its header promises."""
    header = b'{"W_enc":{"dtype":"F32","shape":[4,8],"data_offsets":[0,128]}}'
    whole = len(header).to_bytes(8, "little") + header + b"\0" * 128
    return whole[:-40]


def snapshot(paths: list[Path]) -> dict[Path, str | None]:
    """Each path's content hash (a folder: its listing), or None if it does not exist."""

    def state(path: Path) -> str | None:
        if path.is_dir():
            return "folder:" + ",".join(sorted(p.name for p in path.iterdir()))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    return {path: state(path) for path in paths}
