"""`ember-bot serve`, and the in-process server behind `ember-bot console --serve PRESET`."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import threading
import time
import zipfile
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from server.api.app import create_app
from server.engine_vllm.arguments import add_engine_arguments, build_engine, engine_problem, loaders
from server.fetch_cli import LABELS_URL_HELP
from server.model import saelens_releases
from server.model.catalog import preset_table
from server.model.fetch import fetch, sources_for
from server.model.loading import DEVICE_MAPS, QUANTIZATIONS
from server.model.presets import PRESETS, ModelBundle, load_bundle, load_preset
from server.preflight import preflight

STARTUP_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot serve",
        description="Serve an open model and SAE behind the Ember (Goodfire) API.",
    )
    source = parser.add_argument_group(
        "what to serve (a preset, a SAELens --sae release/id, or --model with --sae)"
    )
    source.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a named model+SAE pair: {', '.join(PRESETS)} (default: tiny)",
    )
    source.add_argument("--model", help="Hugging Face model id or local path")
    source.add_argument(
        "--sae",
        help="SAE weights: a local path, hf:<owner>/<repo>/<path>, or a SAELens release/id "
        f"(e.g. {saelens_releases.EXAMPLE}; it names the model and layer)",
    )
    source.add_argument(
        "--layer", type=int, help="decoder layer whose output the SAE reads (default: the SAE's)"
    )
    source.add_argument(
        "--labels",
        help="labels file: JSONL {index, label} or a Neuronpedia export; or the http(s) URL of "
        "an export's explanations/ folder (default: the preset's or SAE's Neuronpedia labels)",
    )
    source.add_argument("--labels-url", help=LABELS_URL_HELP)
    source.add_argument(
        "--list-presets", action="store_true", help="print the presets with sizes and exit"
    )
    network = parser.add_argument_group("network")
    network.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    network.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    network.add_argument("--api-key", help="require 'Authorization: Bearer <key>' on API routes")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    runtime.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    runtime.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        default="none",
        help="auto: spread the model over every visible GPU with accelerate (default: %(default)s)",
    )
    runtime.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="load the model's weights in 8 or 4 bits (bitsandbytes, NVIDIA GPUs; "
        "pip install 'ember-bot[gpu]'); the SAE stays in --dtype (default: %(default)s)",
    )
    runtime.add_argument(
        "--ignore-memory-check",
        action="store_true",
        help="load even when the memory estimate says it will not fit",
    )
    add_engine_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted. `argv` holds the options after `serve`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print(preset_table())
        return 0
    if args.preset and (args.model or args.sae):
        parser.error("give either --preset or --model/--sae, not both")
    if args.model and args.sae is None:
        parser.error("--model needs --sae too")
    if args.sae and not args.model and not saelens_releases.looks_like_release(args.sae):
        parser.error("--sae with a file, folder or hf: spec needs --model too")
    if problem := engine_problem(args):
        parser.error(problem)
    if problems := preflight(args.host, args.port, args.sae, args.labels):  # before any wait
        for problem in problems:
            print(f"ember-bot serve: {problem}", file=sys.stderr)
        return 1
    try:
        bundle = _load_bundle(args)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        print(f"ember-bot serve: could not load the model: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # most often during a first-use download, which resumes
        print("\nember-bot serve: interrupted; run it again to resume.", file=sys.stderr)
        return 130
    app = create_app(bundle, api_key=args.api_key, engine=build_engine(args, bundle))
    freeze_loaded_objects()
    search, engine = app.state.served.search.mode, app.state.served.runtime.name
    print(
        f"Serving {bundle.model_id} with SAE {bundle.sae_id} (layer {bundle.layer}); "
        f"{search} search; {engine} engine"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _load_bundle(args: argparse.Namespace) -> ModelBundle:
    options: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "device_map": args.device_map,
        "quantize": args.quantize,
        "check_memory": not args.ignore_memory_check,
    }
    sources = sources_for(args.preset, args.model, args.sae, args.labels)
    fetched = fetch(sources, labels_url=args.labels_url)  # what the caches lack, on first use
    options["embedding"] = fetched.embedding
    labels = str(fetched.labels) if fetched.labels is not None else None
    load_model, load_named = loaders(args) or (load_bundle, load_preset)
    if args.sae and saelens_releases.looks_like_release(args.sae):
        source = saelens_releases.resolve(args.sae)
        layer = source.layer if args.layer is None else args.layer
        model = args.model or source.model
        bundle = load_model(model, source.spec, layer, labels, **options)
        return dataclasses.replace(bundle, sae_id=source.name)
    if args.model:
        return load_model(args.model, args.sae, args.layer, labels, **options)
    return load_named(args.preset or "tiny", labels=labels, **options)


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
    labels = fetch(sources_for(preset, None, None, None)).labels
    bundle = load_preset(
        preset, device="auto", dtype="auto", labels=str(labels) if labels is not None else None
    )
    return serve_in_background(create_app(bundle), host=host)
