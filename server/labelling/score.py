"""Explaining one feature and scoring its label by detection.

The strongest windows are split: even ranks are shown to the explainer, odd ranks are held out.
Detection then asks the explainer, for held-out and sampled activating windows mixed with the
same number of windows where the feature never fires (shuffled, in chunks), which ones match
the label. The score is the balanced accuracy: 1 when the label tells them apart perfectly,
0.5 for chance (recall alone when the pool had no non-activating window for the feature).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from server.labelling.collect import Collection, Example
from server.labelling.explainer import Explainer
from server.labelling.prompts import (
    TokenText,
    detect_messages,
    explain_messages,
    parse_detection,
    parse_label,
)

EXPLAIN_MAX_TOKENS = 200
DETECT_CHUNK = 10


@dataclass(frozen=True)
class ScoringConfig:
    shown: int = 10  # strongest windows shown to the explainer
    detect: int = 10  # activating (and as many non-activating) windows per detection


@dataclass(frozen=True)
class FeatureLabel:
    index: int
    label: str
    score: float | None


async def label_feature(
    explainer: Explainer,
    collection: Collection,
    position: int,
    token_text: TokenText,
    config: ScoringConfig,
) -> FeatureLabel | None:
    """The label and detection score of the feature at `position`; None when it never fired.
    Raises UnusableAnswer when an answer has not the shape asked for."""
    index = collection.features[position]
    top = collection.top_examples(position)
    if not top:
        return None
    shown, held = top[0::2][: config.shown], top[1::2]
    answer = await explainer.ask(explain_messages(shown, token_text), EXPLAIN_MAX_TOKENS)
    label = parse_label(answer)
    sampled = collection.sampled_examples(position)
    half = config.detect // 2
    activating = (held[:half] + sampled + held[half:])[: config.detect]
    quiet = collection.quiet_examples(position, len(activating))
    score = await detection_score(explainer, index, label, activating, quiet, token_text)
    return FeatureLabel(index, label, score)


async def detection_score(
    explainer: Explainer,
    index: int,
    label: str,
    activating: list[Example],
    quiet: list[Example],
    token_text: TokenText,
) -> float | None:
    if not activating:
        return None
    excerpts = [(example, True) for example in activating] + [(ex, False) for ex in quiet]
    random.Random(index).shuffle(excerpts)
    chunks = [excerpts[i : i + DETECT_CHUNK] for i in range(0, len(excerpts), DETECT_CHUNK)]
    answers = await asyncio.gather(
        *(_judge(explainer, label, chunk, token_text) for chunk in chunks)
    )
    said = [value for answer in answers for value in answer]
    truth = [fires for _, fires in excerpts]
    hits = sum(s and t for s, t in zip(said, truth, strict=True))
    rejections = sum(not s and not t for s, t in zip(said, truth, strict=True))
    recall = hits / len(activating)
    if not quiet:
        return round(recall, 3)
    return round((recall + rejections / len(quiet)) / 2, 3)


async def _judge(
    explainer: Explainer, label: str, chunk: list[tuple[Example, bool]], token_text: TokenText
) -> list[bool]:
    examples = [example for example, _ in chunk]
    answer = await explainer.ask(detect_messages(label, examples, token_text), 8 + 4 * len(chunk))
    return parse_detection(answer, len(chunk))
