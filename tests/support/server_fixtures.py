"""Session fixtures for the self-hosted server: the tiny bundle and a loopback server over it.

tests/conftest.py makes them visible to every test module, with `model_id` and `client` (an
unmodified goodfire.AsyncClient on the tiny server). Both are cached at module level,
so the tiny model is built and served once per session however many places import them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import goodfire
import pytest

from server.api.app import create_app
from server.cli import BackgroundServer, serve_in_background
from server.model.presets import ModelBundle, build_tiny


@functools.cache
def _tiny_bundle() -> ModelBundle:
    return build_tiny()


@functools.cache
def _tiny_server() -> BackgroundServer:
    return serve_in_background(create_app(_tiny_bundle()))


@pytest.fixture(scope="session")
def tiny_bundle() -> ModelBundle:
    """The tiny preset's ModelBundle (model, tokenizer, SAE, labels), built once."""
    return _tiny_bundle()


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[BackgroundServer]:
    """The tiny preset served on 127.0.0.1 (free port); use `.base_url`."""
    server = _tiny_server()
    yield server
    server.stop()


@pytest.fixture
def model_id(tiny_bundle: ModelBundle) -> str:
    """The id the tiny server serves (what the SDK must send as `model`)."""
    return tiny_bundle.model_id


@pytest.fixture
def client(tiny_server: BackgroundServer) -> goodfire.AsyncClient:
    """An unmodified goodfire.AsyncClient pointed at the tiny server."""
    return goodfire.AsyncClient("any-key", base_url=tiny_server.base_url)
