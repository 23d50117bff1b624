"""A corpus for labelling the tiny model: paragraphs mixing sentences about each planted topic
(two of its words each) with everyday sentences, seeded."""

from __future__ import annotations

import random
from pathlib import Path

from server.model.presets import TINY_PLANTED
from server.model.tiny.vocabulary import WORDS

FILLER = {kind: WORDS[kind].split()[:30] for kind in ("noun", "verb", "adjective")}


def sentence(rng: random.Random, topic_words: list[str] | None) -> str:
    noun, other = rng.sample(FILLER["noun"], 2)
    verb, adjective = rng.choice(FILLER["verb"]), rng.choice(FILLER["adjective"])
    if topic_words is None:
        return f"The {adjective} {noun} {verb} the {other}."
    first, second = rng.sample(topic_words, 2)
    return f"The {adjective} {noun} {verb} {first} and {second} with the {other}."


def write_corpus(path: Path, seed: int = 7, per_topic: int = 10) -> Path:
    rng = random.Random(seed)
    sentences = [
        sentence(rng, words) for _, words in TINY_PLANTED.values() for _ in range(per_topic)
    ]
    sentences += [sentence(rng, None) for _ in range(len(sentences))]
    rng.shuffle(sentences)
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path
