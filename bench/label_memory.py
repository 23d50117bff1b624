"""Memory of `ember-bot label`'s collection stage: a synthetic 20k-feature SAE on the tiny
model over 1M corpus tokens must stay within a stated limit, and flat as the corpus grows.

The collection keeps per feature its top-k windows, a uniform sample of activating windows and
a shared pool (server/labelling/collect.py), so its state is
features x (top_k + samples) x context x 6 bytes (int32 token + float16 activation) plus small
change, whatever the corpus size; per batch it needs batch x context x features floats more.
This script measures the process's resident memory as the corpus streams through, the state's
own size and the checkpoint's, and the throughput.

    python -m bench.label_memory                       # 20,000 features, 1M tokens (minutes)
    python -m bench.label_memory --tokens 100000 --json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import format_table, machine_info, peak_rss_mb, rss_mb
from server.labelling.collect import CollectConfig, Collection, collect, fingerprint
from server.labelling.corpus import Corpus
from server.model.presets import ModelBundle
from server.model.sae import SparseAutoencoder
from server.model.tiny.build import build_tiny_parts
from server.model.tiny.vocabulary import WORDS

LIMIT_MB = 1500  # the stated bound for 20k features (the tiny model itself is ~30 MB)
FIRING_SHARE = 0.01
WORDS_PER_DOCUMENT = 400
TABLE_ROWS = (
    ("RSS before collecting: model, SAE, libraries (MB)", "baseline_rss_mb"),
    ("collection state (MB)", "state_mb"),
    ("checkpoint file (MB)", "checkpoint_mb"),
    ("peak RSS (MB)", "peak_rss_mb"),
    ("limit (MB)", "limit_mb"),
    ("tokens", "tokens"),
    ("seconds", "seconds"),
    ("tokens/s", "tokens_per_s"),
)


def synthetic_bundle(features: int, seed: int = 0) -> ModelBundle:
    """The tiny model with a random SAE of `features` unit encoder directions, biased so that
    each fires on about FIRING_SHARE of tokens."""
    parts = build_tiny_parts()
    generator = torch.Generator().manual_seed(seed)
    hidden = parts.model.config.hidden_size
    W_enc = torch.randn(hidden, features, generator=generator)
    W_enc /= W_enc.norm(dim=0, keepdim=True)
    sample = _residual_sample(parts)
    b_enc = -torch.quantile(sample @ W_enc, 1 - FIRING_SHARE, dim=0)
    W_dec = W_enc.T.contiguous()
    sae = SparseAutoencoder(W_enc, b_enc, W_dec, torch.zeros(hidden), hook_layer=parts.layer)
    sae.requires_grad_(False)
    name = f"synthetic-{features}"
    return ModelBundle(parts.model, parts.tokenizer, sae, parts.layer, parts.labels, "tiny", name)


def _residual_sample(parts: Any) -> torch.Tensor:
    text = " ".join(_words(random.Random(1), 500))
    captured: list[torch.Tensor] = []
    layer = parts.model.model.layers[parts.layer]

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    hook = layer.register_forward_hook(keep)
    try:
        with torch.no_grad():
            parts.model(**parts.tokenizer(text, return_tensors="pt"))
    finally:
        hook.remove()
    return captured[0][0]


def _words(rng: random.Random, count: int) -> list[str]:
    vocabulary = [word for group in WORDS.values() for word in group.split()]
    return [rng.choice(vocabulary) for _ in range(count)]


def write_corpus(path: Path, tokens: int) -> Path:
    """About `tokens` tokens of tiny-vocabulary words (one token each), in documents."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as stream:
        for _ in range(max(1, tokens // WORDS_PER_DOCUMENT)):
            stream.write(" ".join(_words(rng, WORDS_PER_DOCUMENT)) + "\n\n")
    return path


def state_mb(collection: Collection) -> float:
    parts = (collection.top.state(), collection.sampled.state(), collection.pool.state())
    tensors = [tensor for part in parts for tensor in part.values()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle = synthetic_bundle(args.features)
    with tempfile.TemporaryDirectory(prefix="label-bench-") as folder:
        return _measure(args, bundle, Path(folder))


def _measure(args: argparse.Namespace, bundle: ModelBundle, folder: Path) -> dict[str, Any]:
    corpus = Corpus.open(str(write_corpus(folder / "corpus.txt", args.tokens)))
    baseline = rss_mb()
    config = CollectConfig(batch_size=args.batch_size, context=args.context)
    features = list(range(args.features))
    collection = Collection(features, config, torch.device("cpu"))
    windows_total = -(-args.tokens // args.context)
    marks = {round(windows_total * share): share for share in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75)}
    trace: list[dict[str, float]] = []

    def sample(_windows: int, _bytes: int) -> None:
        for mark, share in list(marks.items()):
            if collection.windows_done >= mark:
                trace.append({"share": share, "rss_mb": rss_mb()})
                elapsed = time.perf_counter() - started
                print(
                    f"{share:.0%}: RSS {trace[-1]['rss_mb']} MB, {elapsed:.0f} s", file=sys.stderr
                )
                del marks[mark]

    checkpoint = folder / "collect.pt"
    started = time.perf_counter()
    stamp = fingerprint(bundle, corpus, config, features)
    collect(
        bundle,
        corpus,
        collection,
        checkpoint=checkpoint,
        fingerprint=stamp,
        checkpoint_every=1e9,  # one save, at the end: its size is reported
        on_batch=sample,
    )
    seconds = time.perf_counter() - started
    trace.append({"share": 1.0, "rss_mb": rss_mb()})
    tokens_seen = collection.windows_done * args.context
    peak = peak_rss_mb()
    return {
        "features": args.features,
        "tokens": tokens_seen,
        "windows": collection.windows_done,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens_seen / seconds),
        "baseline_rss_mb": baseline,
        "state_mb": state_mb(collection),
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 1),
        "peak_rss_mb": peak,
        "rss_trace": trace,
        "limit_mb": args.limit_mb,
        "within_limit": peak <= args.limit_mb,
        "machine": machine_info(["torch", "transformers"]),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=CollectConfig().batch_size)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        rows = [
            [f"RSS at {int(100 * point['share'])}% of the corpus (MB)", point["rss_mb"]]
            for point in result["rss_trace"]
        ]
        rows += [[name, result[key]] for name, key in TABLE_ROWS]
        print(f"Collection over {result['tokens']:,} tokens, {result['features']:,} features")
        print(format_table(["measure", "value"], rows))
    return 0 if result["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
