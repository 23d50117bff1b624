"""The vLLM engine's tests: they run in the virtual environment that .ci/vllm-env builds.

Where vLLM or vllm-lens is not installed (the main environment), this folder is skipped;
EMBER_REQUIRE_VLLM=1 (set by .ci/run) turns that skip into an error, so CI cannot pass by
skipping. `vllm_server` runs `ember-bot serve --engine vllm --preset tiny` once per session: the
tiny preset is a random Llama (head_dim 32, the least vLLM's CPU attention takes) that the
server writes to a folder for vLLM to load.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MISSING = [name for name in ("vllm", "vllm_lens") if importlib.util.find_spec(name) is None]
STARTUP_SECONDS = 300.0  # a cold vLLM import and start on two shared cores

if MISSING:
    if os.environ.get("EMBER_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(
            f"EMBER_REQUIRE_VLLM=1 but {', '.join(MISSING)} cannot be imported: run these tests "
            "with the python that .ci/vllm-env prints."
        )
    collect_ignore_glob = ["test_*.py"]


@dataclass
class VllmServer:
    base_url: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """`ember-bot serve --engine vllm --preset tiny` on a free loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    command = [
        str(Path(sys.executable).with_name("ember-bot")),
        "serve",
        "--engine",
        "vllm",
        "--preset",
        "tiny",
        "--port",
        str(port),
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    server = VllmServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_until_healthy(server: VllmServer) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the vLLM server exited:\n{server.output()[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"the vLLM server did not answer in {STARTUP_SECONDS:.0f} s:\n{server.output()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
