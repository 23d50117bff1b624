"""Search by activation: the features that fire on the query's own words, against a baseline.

The query's content words (function words like "a" or "the" left out: they fire grammar
features that say nothing of the topic) run through the served model as a user message; each
feature's strongest activation over its tokens, minus the strongest it reaches on a few neutral
messages through the same chat template, is its lift. Features that fire on any text (the
template's tokens, sentence starts) lift little and drop out; a feature that fires on the word
"cheerful" is found whatever its label says. Scores are lifts relative to the best one (0..1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from server.model.search.lexical import STOPWORDS, WORD

# (text, features): each feature's strongest activation over the text's tokens, as the served
# model reads the text; features=None asks for the strongest features on the text.
Readout = Callable[[str, Sequence[int] | None], Awaitable[dict[int, float]]]

NEUTRAL_TEXTS = ("Hello.", "Tell me more.", "What is this?", "OK, thanks.")
MIN_SHARE = 0.1  # a lift below this share of the best one is noise


class ActivationSearch:
    def __init__(self, readout: Readout, neutral_texts: Sequence[str] = NEUTRAL_TEXTS) -> None:
        self._readout = readout
        self._neutral_texts = tuple(neutral_texts)
        self._baseline: dict[int, float] | None = None  # read on the first search

    async def scores(self, text: str, features: Sequence[int] | None = None) -> dict[int, float]:
        """Features that fire on `text` more than on neutral text, by relative lift (0..1]; only
        among `features` when given."""
        words = WORD.findall(text.lower())
        if not words:
            return {}
        content = " ".join(word for word in words if word not in STOPWORDS) or " ".join(words)
        fired = await self._readout(content, features)
        baseline = await self._neutral()
        lifts = {
            index: value - baseline.get(index, 0.0)
            for index, value in fired.items()
            if value - baseline.get(index, 0.0) > 0
        }
        if not lifts:
            return {}
        best = max(lifts.values())
        return {index: lift / best for index, lift in lifts.items() if lift >= MIN_SHARE * best}

    async def _neutral(self) -> dict[int, float]:
        """The strongest features on each neutral text, at their strongest (a few short forward
        passes, once); a feature none of them shows counts as silent there."""
        if self._baseline is None:
            baseline: dict[int, float] = {}
            for text in self._neutral_texts:
                for index, value in (await self._readout(text, None)).items():
                    baseline[index] = max(baseline.get(index, 0.0), value)
            self._baseline = baseline
        return self._baseline
