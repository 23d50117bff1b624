"""Loopback stand-ins for the Hugging Face Hub and Neuronpedia's dataset exports.

`FakeHub` answers the routes huggingface_hub (2.x; the same in 1.x) uses for `hf_hub_download`
and `snapshot_download`, with the headers it reads (see its file_download.py, hf_api.py and
utils/_http.py):
- `GET /api/models/{repo}[/revision/{rev}]`: model info, with `sha` and `siblings`;
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=…`: the file listing (`oid`, `size`,
  and `lfs` for weights), which snapshot_download walks;
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: small files answered directly (`ETag` = the git
  blob id, `X-Repo-Commit`, `Content-Length`); weights, like the real Hub's LFS files, as a 302
  to a second origin (a "CDN" on another port, which the client does not follow on HEAD) with
  `X-Linked-Etag` (the sha256) and `X-Linked-Size`; the CDN honours `Range`;
- errors with the `X-Error-Code` huggingface_hub maps to its exceptions: `RepoNotFound` (401),
  `GatedRepo` (401 without a token, 403 with one the repo does not accept), `RevisionNotFound`
  and `EntryNotFound` (404, with `X-Repo-Commit` so the client caches the absence).
Point a process at it with `HF_ENDPOINT=hub.url` (read when huggingface_hub is imported).

`FakeExports` serves Neuronpedia-style files by path (404 for anything else) and can cut one
body short once, as a dropped connection would. `partial_files` and `labels_folders` tell what a
download left in the caches.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from server.model.neuronpedia import COMPLETE

LFS_SUFFIXES = (".safetensors", ".pth", ".pt", ".npz", ".bin")


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: bool = False  # send half the body, then drop the connection

    @classmethod
    def json(cls, data: object, status: int = 200) -> Reply:
        body = json.dumps(data).encode()
        return cls(status, {"Content-Type": "application/json"}, body)


Route = Callable[[str, str, dict[str, str]], Reply]


class Loopback:
    """A threaded HTTP/1.1 server on 127.0.0.1 (free port) answering with `route`; it records
    every (method, path) it is asked."""

    def __init__(self, route: Route) -> None:
        self.requests: list[tuple[str, str]] = []
        handler = _handler(route, self.requests)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> Loopback:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(route: Route, log: list[tuple[str, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer("GET")

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def _answer(self, method: str) -> None:
            log.append((method, self.path))
            reply = route(method, self.path, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(reply.status)
            headers = {"Content-Length": str(len(reply.body)), **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method == "HEAD":
                return
            if reply.cut:
                self.wfile.write(reply.body[: len(reply.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    return Handler


# ---- the Hub -----------------------------------------------------------------------------------


@dataclass
class HubRepo:
    files: dict[str, bytes]
    gated: bool = False
    tokens: frozenset[str] = frozenset()  # tokens whose owners accepted a gated repo's licence

    @cached_property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()

    def entry(self, path: str) -> dict[str, object]:
        content = self.files[path]
        entry: dict[str, object] = {
            "type": "file",
            "oid": git_blob_id(content),
            "size": len(content),
            "path": path,
        }
        if is_lfs(path):
            sha256 = hashlib.sha256(content).hexdigest()
            entry["lfs"] = {"oid": sha256, "size": len(content), "pointerSize": 134}
        return entry

    def folders(self) -> set[str]:
        return {
            "/".join(path.split("/")[:depth])
            for path in self.files
            for depth in range(1, path.count("/") + 1)
        }


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def _error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"X-Error-Code": code, "X-Error-Message": message, **headers})


class FakeHub:
    """A Hub serving `repos` (repo id -> HubRepo); `url` goes in HF_ENDPOINT."""

    def __init__(self, repos: dict[str, HubRepo]) -> None:
        self.repos = repos
        self._hub = Loopback(self._route)
        self._cdn = Loopback(self._cdn_route)
        self.url = self._hub.url

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._hub.requests + self._cdn.requests

    def __enter__(self) -> FakeHub:
        self._hub.start()
        self._cdn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hub.stop()
        self._cdn.stop()

    def _route(self, method: str, target: str, headers: dict[str, str]) -> Reply:
        url = urlsplit(target)
        path = unquote(url.path)
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._info(match.group(1), match.group(2) or "main")
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?", path):
            recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
            return self._tree(match.group(1), match.group(2), match.group(3) or "", recursive)
        if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo_id, revision, file = match.groups()
            return self._resolve(repo_id, revision, file, headers.get("authorization"))
        return Reply(404)

    def _repo(self, repo_id: str, revision: str) -> HubRepo | Reply:
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(401, "RepoNotFound", "Repository not found")
        if revision not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return repo

    def _info(self, repo_id: str, revision: str) -> Reply:
        repo = self._repo(repo_id, revision)
        if isinstance(repo, Reply):
            return repo
        return Reply.json(
            {
                "_id": repo.sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(repo.files)],
            }
        )

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> Reply:
        repo = self._repo(repo_id, revision)
        if isinstance(repo, Reply):
            return repo
        if folder and folder not in repo.folders():
            return _error(404, "EntryNotFound", f"{folder} does not exist", **_commit(repo))
        prefix = f"{folder}/" if folder else ""
        entries: list[dict[str, object]] = []
        for name in sorted(repo.folders()):
            rest = name.removeprefix(prefix)
            if name.startswith(prefix) and (recursive or "/" not in rest):
                oid = git_blob_id(name.encode())
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
        for path in sorted(repo.files):
            rest = path.removeprefix(prefix)
            if path.startswith(prefix) and (recursive or "/" not in rest):
                entries.append(repo.entry(path))
        return Reply.json(entries)

    def _resolve(self, repo_id: str, revision: str, path: str, auth: str | None) -> Reply:
        repo = self._repo(repo_id, revision)
        if isinstance(repo, Reply):
            return repo
        if repo.gated and auth not in {f"Bearer {token}" for token in repo.tokens}:
            message = (
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _error(401 if auth is None else 403, "GatedRepo", message)
        if path not in repo.files:
            return _error(404, "EntryNotFound", "Entry not found", **_commit(repo))
        content = repo.files[path]
        if is_lfs(path):
            sha256 = hashlib.sha256(content).hexdigest()
            headers = {
                "Location": f"{self._cdn.url}/cdn/{sha256}",
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(content)),
                "ETag": f'"{git_blob_id(content)}"',
                **_commit(repo),
            }
            return Reply(302, headers)
        headers = {"ETag": f'"{git_blob_id(content)}"', **_commit(repo)}
        return Reply(200, {"Content-Type": "application/octet-stream", **headers}, content)

    def _cdn_route(self, method: str, target: str, headers: dict[str, str]) -> Reply:
        match = re.fullmatch(r"/cdn/([0-9a-f]{64})", urlsplit(target).path)
        blobs = {
            hashlib.sha256(content).hexdigest(): content
            for repo in self.repos.values()
            for content in repo.files.values()
        }
        if match is None or match.group(1) not in blobs:
            return Reply(404)
        content = blobs[match.group(1)]
        start = re.fullmatch(r"bytes=(\d+)-", headers.get("range", ""))
        if start is None:
            return Reply(200, {"Content-Type": "application/octet-stream"}, content)
        offset = int(start.group(1))
        content_range = f"bytes {offset}-{len(content) - 1}/{len(content)}"
        return Reply(206, {"Content-Range": content_range}, content[offset:])


def _commit(repo: HubRepo) -> dict[str, str]:
    return {"X-Repo-Commit": repo.sha}


# ---- Neuronpedia's exports ---------------------------------------------------------------------


class FakeExports:
    """Serves `files` (URL path -> bytes); `cut_once` paths are cut short on their first GET.
    A missing key answers `missing_status`: 404, or 403 as S3 does where listing is not allowed."""

    def __init__(self, files: dict[str, bytes], missing_status: int = 404) -> None:
        self.files = files
        self.missing_status = missing_status
        self.cut_once: set[str] = set()
        self._server = Loopback(self._route)
        self.url = self._server.url

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    def __enter__(self) -> FakeExports:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _route(self, method: str, target: str, headers: dict[str, str]) -> Reply:
        path = urlsplit(target).path
        if path not in self.files:
            code = b"NoSuchKey" if self.missing_status == 404 else b"AccessDenied"
            return Reply(self.missing_status, {"Content-Type": "application/xml"}, code)
        cut = method == "GET" and path in self.cut_once
        if cut:
            self.cut_once.discard(path)
        return Reply(200, {"Content-Type": "application/x-gzip"}, self.files[path], cut=cut)


# ---- what a download left behind ---------------------------------------------------------------


def partial_files(*roots: Path) -> list[Path]:
    """Half-written files: our `.part` temporaries, huggingface_hub's `.incomplete` ones."""
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.name.endswith((".part", ".incomplete"))
    ]


def labels_folders(cache: Path) -> dict[str, bool]:
    """Each `<model id>/<source id>` folder of the labels cache: whether it is marked complete."""
    if not cache.exists():
        return {}
    return {
        f"{model.name}/{source.name}": (source / COMPLETE).is_file()
        for model in cache.iterdir()
        for source in model.iterdir()
    }
