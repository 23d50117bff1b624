"""Token sampling, incremental detokenization and stop strings: the text side of generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

REPLACEMENT_CHAR = "\ufffd"
GREEDY_BELOW = 1e-5  # temperatures this close to 0 would overflow the softmax


def sample_next_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """Pick the next token from last-position `logits` ([vocab]).

    Temperature 0 (or nearly) is greedy. Otherwise nucleus sampling: keep the smallest set of
    most likely tokens whose probability reaches `top_p` (always at least one), then draw.
    """
    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    in_nucleus = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    in_nucleus[0] = True
    choice = torch.multinomial(sorted_probs * in_nucleus, 1, generator=generator)
    return int(order[choice])


class Decoder(Protocol):
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that are always whole characters.

    Decoding tokens one by one breaks characters that span several tokens (multi-byte UTF-8,
    byte-level BPE) and loses spaces that tokenizers add depending on context. Instead decode a
    short window and release only text that is complete (no trailing replacement character).
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) <= len(prefix) or text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return text[len(prefix) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class StopMatcher:
    """Finds stop strings in streamed text, holding back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string completed."""
        self._pending += text
        cut = min((i for i in map(self._pending.find, self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            emit, self._pending = self._pending[:cut], ""
            return emit
        keep = self._longest_stop_prefix_suffix()
        emit = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(emit) :]
        return emit

    def flush(self) -> str:
        """Whatever is still held back (generation ended without completing a stop string)."""
        emit, self._pending = self._pending, ""
        return emit

    def _longest_stop_prefix_suffix(self) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
