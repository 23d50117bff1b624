"""`ember-bot label`: label an SAE's features from a text corpus with a chat model as the
explainer (see server/labelling/ and docs/labelling.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import zipfile
from pathlib import Path

from server.labelling.collect import CheckpointMismatch, CollectConfig
from server.labelling.corpus import Corpus, CorpusError
from server.labelling.explainer import ExplainerError
from server.labelling.output import WorkFolder
from server.labelling.pipeline import (
    LabellingError,
    LabelRun,
    Summary,
    check_work_folder,
    collect_stage,
    connect,
    explain_stage,
    finish,
)
from server.labelling.score import ScoringConfig
from server.model import saelens_releases
from server.model.presets import PRESETS, ModelBundle, load_bundle, load_preset

DEFAULT_KEY_ENV = "EXPLAINER_API_KEY"
RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot label",
        description="Label an SAE's features: collect each feature's top activating contexts "
        "from a corpus, ask a chat model what they share, score each label by detection, and "
        "write a label file that `ember-bot serve --labels` loads.",
    )
    source = parser.add_argument_group("what to label (a preset, or --model with --sae)")
    source.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    source.add_argument("--model", help="Hugging Face model id or local path")
    source.add_argument(
        "--sae", help="SAE: a local path, hf:<owner>/<repo>/<path>, or a SAELens release/id"
    )
    source.add_argument("--layer", type=int, help="decoder layer the SAE reads (default: its own)")
    source.add_argument(
        "--features", help="feature indices, e.g. 0-4095 or 12,40-49 (default: all)"
    )
    data = parser.add_argument_group("corpus and output")
    data.add_argument(
        "--corpus",
        required=True,
        help="a .txt (blank-line separated documents) "
        "or .jsonl ({'text': ...}) file, a folder of them, or hf:<dataset>[:split]",
    )
    data.add_argument("--max-tokens", type=int, help="stop after this many corpus tokens")
    data.add_argument("--out", required=True, type=Path, help="label file to write (JSONL)")
    data.add_argument("--resume", action="store_true", help="continue an interrupted run")
    data.add_argument(
        "--override-published",
        action="store_true",
        help="mark the labels so that they replace published ones when both are loaded",
    )
    explain = parser.add_argument_group("explainer (an OpenAI-compatible chat endpoint)")
    explain.add_argument(
        "--explainer",
        metavar="URL",
        help="API root of an OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 "
        "(default: the model being labelled, through this server's own chat endpoint)",
    )
    explain.add_argument("--explainer-model", help="model name to ask (default: its first listed)")
    explain.add_argument(
        "--explainer-key-env",
        default=DEFAULT_KEY_ENV,
        metavar="VAR",
        help="environment variable holding the explainer's API key (default: %(default)s)",
    )
    explain.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    explain.add_argument(
        "--explainer-retries",
        type=int,
        default=3,
        help="retries of a failed request, with backoff from 1 s (default: %(default)s)",
    )
    tuning = parser.add_argument_group("collection")
    defaults = CollectConfig()
    tuning.add_argument("--context", type=int, default=defaults.context, help="tokens per window")
    tuning.add_argument("--top-k", type=int, default=defaults.top_k, help="top windows per feature")
    tuning.add_argument(
        "--samples",
        type=int,
        default=defaults.samples,
        help="random activating windows per feature",
    )
    tuning.add_argument("--batch-size", type=int, default=defaults.batch_size)
    tuning.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS")
    tuning.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    tuning.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    tuning.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _label(args)
    except (CorpusError, LabellingError, CheckpointMismatch) as error:
        return _fail(str(error), 1)
    except ExplainerError as error:
        work = WorkFolder(args.out)
        kept = (
            f" Work so far is kept in {work.path}: run again with --resume."
            if work.exists()
            else ""
        )
        return _fail(f"{error}{kept}", 1)
    except KeyboardInterrupt:
        work = args.out.with_name(args.out.name + ".work")
        print(
            f"\nember-bot label: interrupted; run it again with --resume to continue from {work}.",
            file=sys.stderr,
        )
        return 130


def _label(args: argparse.Namespace) -> int:
    if args.preset and (args.model or args.sae):
        return _fail("give either --preset or --model/--sae, not both", 2)
    if not args.preset and not args.sae:
        return _fail("name a --preset, or give --model with --sae", 2)
    if args.sae and not args.model and not saelens_releases.looks_like_release(args.sae):
        return _fail("--sae with a file, folder or hf: spec needs --model too", 2)
    corpus = Corpus.open(args.corpus)
    requested = _feature_ranges(args.features) if args.features else None
    run = LabelRun(
        out=args.out,
        features=[],
        explainer_url=args.explainer or "",
        explainer_model=args.explainer_model,
        api_key=os.environ.get(args.explainer_key_env) or None,
        resume=args.resume,
        override=args.override_published,
        concurrency=args.concurrency,
        retries=args.explainer_retries,
        checkpoint_every=args.checkpoint_every,
        collect=CollectConfig(
            context=args.context,
            top_k=args.top_k,
            samples=args.samples,
            batch_size=args.batch_size,
            max_windows=None if args.max_tokens is None else -(-args.max_tokens // args.context),
        ),
        scoring=ScoringConfig(shown=(args.top_k + 1) // 2),
        progress=not args.quiet,
    )
    work = check_work_folder(run)
    try:
        bundle = _load(args)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        return _fail(f"could not load the model: {error}", 1)
    d_sae = bundle.sae.d_sae
    run.features = requested if requested is not None else list(range(d_sae))
    if run.features[-1] >= d_sae:
        return _fail(
            f"--features goes up to {run.features[-1]}, but this SAE has features 0-{d_sae - 1}", 2
        )
    summary = asyncio.run(_stages(bundle, corpus, run, work))
    mean = "n/a" if summary.mean_score is None else f"{summary.mean_score:.2f}"
    print(
        f"Wrote {summary.labelled} labels to {run.out} (explainer {summary.explainer}; mean "
        f"detection score {mean}; {summary.silent} features never fired"
        + (f"; {summary.unusable} unusable answers" if summary.unusable else "")
        + f"). Serve them: ember-bot serve ... --labels {run.out}"
    )
    return 0


async def _stages(bundle: ModelBundle, corpus: Corpus, run: LabelRun, work: WorkFolder) -> Summary:
    server = None
    if not run.explainer_url:  # the served model, through our own chat endpoint
        from server.api.app import create_app
        from server.cli import serve_in_background

        server = serve_in_background(create_app(bundle))
        run.explainer_url = f"{server.base_url}/api/inference/v1"
    try:
        explainer = await connect(run)
        async with explainer:
            collection = collect_stage(bundle, corpus, run, work)
            summary = await explain_stage(bundle, collection, explainer, run, work)
        finish(run, work)
        return summary
    finally:
        if server is not None:
            server.stop()


def _load(args: argparse.Namespace) -> ModelBundle:
    options = {"device": args.device, "dtype": args.dtype}
    if args.preset:
        return load_preset(args.preset, **options)
    if saelens_releases.looks_like_release(args.sae):
        source = saelens_releases.resolve(args.sae)
        layer = source.layer if args.layer is None else args.layer
        return load_bundle(args.model or source.model, source.spec, layer, None, **options)
    return load_bundle(args.model, args.sae, args.layer, None, **options)


def _feature_ranges(text: str) -> list[int]:
    indices: set[int] = set()
    for part in text.split(","):
        match = RANGE.match(part.strip())
        if match is None:
            raise LabellingError(f"--features {text!r}: use indices and ranges like 0-4095,7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise LabellingError(f"--features {text!r}: the range {part} runs backwards")
        indices.update(range(first, last + 1))
    return sorted(indices)


def _fail(message: str, code: int) -> int:
    print(f"ember-bot label: {' '.join(message.split())}", file=sys.stderr)
    return code
