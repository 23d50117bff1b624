"""What the explainer is asked, and how its answers are read.

The conventions are delphi's (EleutherAI's autointerp library, see docs/labelling.md): the
tokens where the feature fires are marked <<like this>>, the explanation comes on a last line
after `[EXPLANATION]:`, and detection answers are a list of 0s and 1s, one per excerpt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from server.labelling.collect import Example

MARK_FRACTION = 0.25  # a token is marked when it reaches this share of the example's peak
MAX_LABEL_CHARS = 120
EXPLANATION_TAG = "[EXPLANATION]:"

EXPLAIN_SYSTEM = (
    "You are labelling a feature of a language model. You are shown text excerpts in which "
    "the feature fires; the tokens where it fires most are marked <<like this>>. Work out what "
    "the marked tokens (and their contexts) have in common. Keep the label short: a few words, "
    "like 'pirate speech' or 'names of rivers'. Do not mention the markers. The last line of "
    f"your answer must be the label, written as: {EXPLANATION_TAG} <label>"
)
DETECT_SYSTEM = (
    "You are checking a label of a language-model feature. You are given the label and "
    "numbered text excerpts. For each excerpt, answer 1 if the feature the label describes is "
    "present in it and 0 if not. Reply with only a list of 0s and 1s, one per excerpt, in "
    "order, like [1, 0, 0, 1]."
)
DETECT_HEADING = "Excerpts to judge:"

Messages = list[dict[str, str]]
TokenText = Callable[[int], str]


class UnusableAnswer(ValueError):
    """An answer that does not have the shape asked for (quoted in the message)."""


def explain_messages(examples: Sequence[Example], token_text: TokenText) -> Messages:
    lines = [
        f"Excerpt {number}: {marked(example, token_text)}"
        for number, example in enumerate(examples, start=1)
    ]
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def detect_messages(label: str, examples: Sequence[Example], token_text: TokenText) -> Messages:
    lines = [
        f"Excerpt {number}: {plain(example, token_text)}"
        for number, example in enumerate(examples, start=1)
    ]
    user = f"Label: {label}\n\n{DETECT_HEADING}\n" + "\n".join(lines)
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": user}]


def marked(example: Example, token_text: TokenText) -> str:
    """The example's text with each run of strongly active tokens wrapped in << >>."""
    peak = max(example.activations, default=0.0)
    threshold = peak * MARK_FRACTION if peak > 0 else float("inf")
    parts: list[str] = []
    inside = False
    for token, activation in zip(example.tokens, example.activations, strict=True):
        hot = activation >= threshold
        if hot != inside:
            parts.append("<<" if hot else ">>")
            inside = hot
        parts.append(token_text(token))
    if inside:
        parts.append(">>")
    return _one_line("".join(parts))


def plain(example: Example, token_text: TokenText) -> str:
    return _one_line("".join(token_text(token) for token in example.tokens))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_label(answer: str) -> str:
    """The label in an explanation answer: after the last [EXPLANATION]: tag, else the last
    non-empty line; quotes and a final full stop dropped, cut to MAX_LABEL_CHARS at a word."""
    text = answer.rsplit(EXPLANATION_TAG, 1)[-1] if EXPLANATION_TAG in answer else answer
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    label = lines[-1].strip(" \"'`*").rstrip(".") if lines else ""
    if not label:
        raise UnusableAnswer(f"the explanation {_quote(answer)} holds no label")
    if len(label) > MAX_LABEL_CHARS:
        label = label[:MAX_LABEL_CHARS].rsplit(" ", 1)[0] + "…"
    return label


def parse_detection(answer: str, count: int) -> list[bool]:
    """The 0/1 list answering a detection prompt of `count` excerpts."""
    lists = re.findall(r"\[\s*([01](?:\s*,\s*[01])*)\s*\]", answer)
    if not lists:
        raise UnusableAnswer(f"the detection answer {_quote(answer)} is not a list of 0s and 1s")
    values = [value.strip() == "1" for value in lists[-1].split(",")]
    if len(values) != count:
        raise UnusableAnswer(
            f"the detection answer {_quote(answer)} has {len(values)} entries for {count} excerpts"
        )
    return values


def _quote(answer: str, limit: int = 80) -> str:
    flat = _one_line(answer)
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
