"""`ember-bot fetch`: download a preset's (or a --model/--sae pair's) model, SAE, labels and
search embedding model ahead of serving, so that `HF_HUB_OFFLINE=1 ember-bot serve` works.

Kept apart from server/cli.py so that it starts without importing torch or transformers.
"""

from __future__ import annotations

import argparse
import sys

from server.model.catalog import CATALOG
from server.model.fetch import TINY, fetch, sources_for
from server.model.neuronpedia import DEFAULT_LABELS_URL, LABELS_CACHE_ENV, LABELS_URL_ENV

LABELS_URL_HELP = (
    f"base URL of Neuronpedia's dataset exports or a mirror (default: ${LABELS_URL_ENV}, else "
    f"{DEFAULT_LABELS_URL})"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot fetch",
        description="Download a model, its SAE, the SAE's labels and the search embedding model "
        f"into the Hugging Face cache and the labels cache (${LABELS_CACHE_ENV}, else "
        "~/.cache/ember-bot/labels), so that serving works offline (HF_HUB_OFFLINE=1).",
    )
    parser.add_argument("preset", nargs="?", help=f"a preset name ({', '.join([TINY, *CATALOG])})")
    parser.add_argument("--model", help="Hugging Face model id (with --sae)")
    parser.add_argument("--sae", help="hf:<owner>/<repo>/<path>, or a SAELens release/id")
    parser.add_argument(
        "--labels",
        help="labels: a local file or folder, or the http(s) URL of an export's explanations/ "
        "folder (default: the preset's or SAE's Neuronpedia labels)",
    )
    parser.add_argument("--labels-url", help=LABELS_URL_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Fetch, print where everything went; non-zero with one line on stderr on failure."""
    args = build_parser().parse_args(argv)
    if args.preset and (args.model or args.sae):
        return _fail("give either a preset or --model/--sae, not both", 2)
    if args.model and not args.sae:
        return _fail("--model needs --sae too", 2)
    if not (args.preset or args.sae):
        return _fail(f"name a preset ({', '.join([TINY, *CATALOG])}) or give --sae", 2)
    try:
        sources = sources_for(args.preset, args.model, args.sae, args.labels)
    except ValueError as error:
        return _fail(str(error), 2)
    if sources.model is None and sources.sae is None:
        print(f"{args.preset}: built in memory, nothing to fetch.")
        return 0
    try:
        fetch(sources, labels_url=args.labels_url)
    except (OSError, ValueError) as error:
        return _fail(str(error), 1)
    except KeyboardInterrupt:
        print("\nember-bot fetch: interrupted; run it again to resume.", file=sys.stderr)
        return 130
    serve = sources.command.replace("ember-bot fetch", "ember-bot serve", 1)
    if args.preset:
        serve = f"ember-bot serve --preset {args.preset}"
    print(f"Fetched. Offline from now on: HF_HUB_OFFLINE=1 {serve}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"ember-bot fetch: {' '.join(message.split())}", file=sys.stderr)
    return code
