"""`ember-bot serve`, and the in-process server behind `ember-bot console --serve PRESET`."""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from types import TracebackType

import httpx
import uvicorn
from fastapi import FastAPI

from server.api.app import create_app
from server.model.presets import PRESETS, ModelBundle, load_bundle, load_preset

STARTUP_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot serve",
        description="Serve an open model and SAE behind the Ember (Goodfire) API.",
    )
    source = parser.add_argument_group("what to serve (a preset, or --model with --sae)")
    source.add_argument(
        "--preset", choices=sorted(PRESETS), help="a named model+SAE pair (default: tiny)"
    )
    source.add_argument("--model", help="Hugging Face model id or local path")
    source.add_argument("--sae", help="SAE weights: a local path or a SAELens release/id")
    source.add_argument(
        "--layer", type=int, help="decoder layer whose output the SAE reads (default: the SAE's)"
    )
    source.add_argument(
        "--labels", help="labels file: JSONL {index, label} or a Neuronpedia export"
    )
    network = parser.add_argument_group("network")
    network.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    network.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    network.add_argument("--api-key", help="require 'Authorization: Bearer <key>' on API routes")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    runtime.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted. `argv` holds the options after `serve`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model and args.preset:
        parser.error("give either --preset or --model, not both")
    if args.model and args.sae is None:
        parser.error("--model needs --sae too")
    try:
        bundle = _load_bundle(args)
    except (OSError, ValueError, KeyError) as error:
        print(f"ember-bot serve: could not load the model: {error}", file=sys.stderr)
        return 1
    app = create_app(bundle, api_key=args.api_key)
    freeze_loaded_objects()
    print(f"Serving {bundle.model_id} with SAE {bundle.sae_id} (layer {bundle.layer})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _load_bundle(args: argparse.Namespace) -> ModelBundle:
    options = {"device": args.device, "dtype": args.dtype}
    if args.model:
        return load_bundle(args.model, args.sae, args.layer, args.labels, **options)
    return load_preset(args.preset or "tiny", labels=args.labels, **options)


class BackgroundServer:
    """A uvicorn server on a daemon thread; `base_url` is where it answers."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ember-server", daemon=True)
        self._host = host
        self.base_url = ""

    def start(self, timeout: float = STARTUP_TIMEOUT) -> BackgroundServer:
        """Start serving and return once /health answers."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.base_url = f"http://{host}:{port}"
        httpx.get(f"{self.base_url}/health", timeout=timeout).raise_for_status()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_background(app: FastAPI, *, host: str = "127.0.0.1") -> BackgroundServer:
    """Serve `app` on a free port of `host` in this process; returns once it answers."""
    freeze_loaded_objects()
    return BackgroundServer(app, host).start()


def freeze_loaded_objects() -> None:
    """Exempt everything loaded so far (model, tokenizer, libraries) from garbage collection.

    A full collection otherwise walks those millions of objects and stalls every thread of the
    process, the event loop included, for a third of a second (measured on the tiny preset).
    """
    gc.collect()
    gc.freeze()


def start_background_server(preset: str, *, host: str = "127.0.0.1") -> BackgroundServer:
    """Load `preset` and serve it in this process (for `ember-bot console --serve PRESET`)."""
    bundle = load_preset(preset, device="auto", dtype="auto")
    return serve_in_background(create_app(bundle), host=host)
