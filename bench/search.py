"""Benchmark: feature search over a 65k-label SAE, and what its label embeddings cost at start.

- start: loading the labels and building the search (lexical alone; then with the embedding
  model, cold: every label embedded and the cache written; then warm: read from the cache);
- search: latency of `FeatureSearch.search` (top_k 10) for varied queries, semantic (query
  embedded on the CPU, cosine over every label, BM25 and trigrams blended) and lexical only;
- activation: the activation part on the tiny preset (its forward pass on the query's words),
  which a served model adds to every search (its cost grows with the served model).

The labels are synthetic ("adjective noun in domain contexts" and the like, all distinct). The
embedding model is, unless --embedding names a folder, a random-weight BERT of
all-MiniLM-L6-v2's exact shape (6 layers, width 384, 12 heads) with a WordPiece vocabulary of
the labels' words: its timings are the real model's, its rankings meaningless.

    python -m bench.search [--labels 65536] [--queries 300] [--embedding FOLDER] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import describe_machine, format_table, machine_info, summary_ms

_ADJECTIVES_TEXT = (
    "formal informal angry happy sad polite rude technical legal medical financial ancient modern "
    "nautical rural urban poetic sarcastic cheerful gloomy religious scientific political "
    "romantic violent gentle musical culinary digital historical fictional"
)
_NOUNS_TEXT = (
    "speech tone letters code syntax recipes weather storms cats dogs ships pirates kings wars "
    "numbers dates names places colours emotions questions answers prices laws diseases songs "
    "poems games sports planets stars rivers mountains cities markets tools machines"
)
_DOMAINS_TEXT = (
    "news dialogue fiction emails forums contracts textbooks reviews tweets lyrics manuals "
    "transcripts essays reports chats recipes papers stories"
)
ADJECTIVES, NOUNS, DOMAINS = (
    text.split() for text in (_ADJECTIVES_TEXT, _NOUNS_TEXT, _DOMAINS_TEXT)
)
TEMPLATES = (
    "{a} {n} in {d}",
    "mentions of {n} in {a} {d}",
    "the word '{n}' and {a} {n2}",
    "{a} and {a2} {n} in {d} contexts",
    "references to {n} and {n2}",
)
QUERY_WORDS = ("pirate", "cheerful speech", "legal contracts", "cats and dogs", "stars", "angry")
MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}


def synthetic_labels(count: int, seed: int = 0) -> dict[int, str]:
    """`count` distinct labels, by index."""
    rng = random.Random(seed)
    labels: dict[int, str] = {}
    seen: set[str] = set()
    while len(labels) < count:
        label = rng.choice(TEMPLATES).format(
            a=rng.choice(ADJECTIVES),
            a2=rng.choice(ADJECTIVES),
            n=rng.choice(NOUNS),
            n2=rng.choice(NOUNS),
            d=rng.choice(DOMAINS),
        )
        if label in seen:
            label = f"{label} (variant {len(labels)})"
        seen.add(label)
        labels[len(labels)] = label
    return labels


def queries(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    pool = [*QUERY_WORDS, *ADJECTIVES, *NOUNS, "xyzzy", "talk like a pirate", "#123"]
    return [
        " ".join(rng.sample(pool, rng.choice((1, 1, 2, 3)))) if index % 4 else rng.choice(pool)
        for index in range(count)
    ]


def random_minilm(folder: Path, layers: int) -> Path:
    """A random BERT of all-MiniLM-L6-v2's shape (`layers` of them), with a WordPiece tokenizer
    over the synthetic labels' words, saved in `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for text in (*ADJECTIVES, *NOUNS, *DOMAINS) for w in text.split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocabulary = [*specials, *letters, *(f"##{c}" for c in letters), *words, "'", "(", ")"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocabulary),
        intermediate_size=1536,
        **MINILM_SHAPE | {"num_hidden_layers": layers},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    return folder


def timed(action: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def search_latency(engine: Any, texts: list[str], top_k: int) -> dict[str, float]:
    async def run() -> list[float]:
        await engine.search(texts[0], top_k)  # warm-up
        durations = []
        for text in texts:
            start = time.perf_counter()
            hits = await engine.search(text, top_k)
            durations.append(time.perf_counter() - start)
            assert len(hits) == top_k
        return durations

    return summary_ms(asyncio.run(run()), (50, 99))


def activation_latency(texts: list[str]) -> dict[str, float]:
    from server.api.feature_search import engine_readout
    from server.engine.runtime import Runtime
    from server.model.presets import build_tiny
    from server.model.search.activation import ActivationSearch

    runtime = Runtime(build_tiny())
    try:
        activation = ActivationSearch(engine_readout(runtime))

        async def run() -> list[float]:
            durations = []
            for text in [texts[0], *texts]:  # the first reads the neutral baseline
                start = time.perf_counter()
                await activation.scores(text)
                durations.append(time.perf_counter() - start)
            return durations[1:]

        return summary_ms(asyncio.run(run()), (50, 99))
    finally:
        runtime.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from server.model.labels import LabelIndex
    from server.model.search.blend import FeatureSearch
    from server.model.search.cache import SEARCH_CACHE_ENV

    texts = queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        os.environ[SEARCH_CACHE_ENV] = str(root / "cache")
        path = root / "labels.jsonl"
        labels = synthetic_labels(args.labels)
        path.write_text("\n".join(json.dumps({"index": i, "label": t}) for i, t in labels.items()))
        model = (
            Path(args.embedding)
            if args.embedding
            else random_minilm(root / "model", args.embedding_layers)
        )
        d_sae = args.labels
        lexical, lexical_s = timed(lambda: FeatureSearch(LabelIndex.load(path, d_sae)))

        def semantic_start() -> Any:
            return FeatureSearch(LabelIndex.load(path, d_sae, embedding=model, device=args.device))

        _, cold_s = timed(semantic_start)
        semantic, warm_s = timed(semantic_start)
        assert semantic.labels.embeddings.from_cache
        return {
            "labels": args.labels,
            "queries": args.queries,
            "embedding_model": args.embedding or "random all-MiniLM-L6-v2 shape",
            "start_s": {
                "lexical": round(lexical_s, 2),
                "semantic_cold": round(cold_s, 2),
                "semantic_warm": round(warm_s, 2),
            },
            "search_ms": {
                "semantic": search_latency(semantic, texts, args.top_k),
                "lexical": search_latency(lexical, texts, args.top_k),
                "activation_tiny": activation_latency(texts[:50]),
            },
        }


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    start = results["start_s"]
    rows = [
        ["lexical only", start["lexical"]],
        ["semantic, cold (embed every label, write cache)", start["semantic_cold"]],
        ["semantic, warm (embeddings from cache)", start["semantic_warm"]],
    ]
    latency = [
        [name, numbers["p50_ms"], numbers["p99_ms"]]
        for name, numbers in results["search_ms"].items()
    ]
    return "\n\n".join(
        [
            f"{results['labels']:,} labels, {results['queries']} queries, "
            f"embedding model: {results['embedding_model']}",
            format_table(["start", "seconds"], rows),
            format_table(["search (top_k 10)", "p50 ms", "p99 ms"], latency),
            f"machine: {describe_machine(report['machine'])}",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=65_536, help="labels (default: 65536)")
    parser.add_argument("--queries", type=int, default=300, help="timed searches (default: 300)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--embedding", help="a sentence-embedding model folder to use instead")
    parser.add_argument("--device", default="cpu", help="the embedding model's device")
    parser.add_argument(
        "--embedding-layers", type=int, default=6, help="the random model's layers (default: 6)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = {"results": measure(args), "machine": machine_info(("torch", "transformers"))}
    print(json.dumps(report) if args.json else render(report))


if __name__ == "__main__":
    main()
