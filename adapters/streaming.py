"""One streaming renderer for every chat platform.

A reply arrives as text deltas. StreamingMessage shows it by editing a platform message at most
once per `edit_interval`, with a visible "writing" marker, and rolls over into a new message
before the platform's size limit without breaking a code block. `finish()` always leaves the
last message in a final state (marker gone, optional note and footer), even after an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

FENCE = "```"


class MessageSink(Protocol):
    """A platform's way to post and edit one message. Handles are opaque to us."""

    async def post(self, text: str) -> object: ...

    async def edit(self, handle: object, text: str) -> None: ...


@dataclass(frozen=True)
class PlatformLimits:
    max_length: int  # per message, in the platform's unit (see `measure`)
    edit_interval: float = 1.0  # seconds between edits of one message
    writing_marker: str = " ▌"
    measure: Callable[[str], int] = len


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


class StreamingMessage:
    def __init__(
        self,
        sink: MessageSink,
        limits: PlatformLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        placeholder: str = "…",
    ) -> None:
        self._sink = sink
        self._limits = limits
        self._clock = clock
        self._placeholder = placeholder
        self._handle: object | None = None
        self._text = ""  # text of the current (last) message
        self._shown = ""  # what the platform currently displays for it
        self._last_edit = float("-inf")
        self.messages_posted = 0

    async def start(self) -> None:
        """Post the placeholder message so users see the bot is writing."""
        if self._handle is None:
            await self._post(self._placeholder + self._limits.writing_marker)

    async def push(self, delta: str) -> None:
        self._text += delta
        await self._roll_over_if_needed()
        if self._clock() - self._last_edit >= self._limits.edit_interval:
            await self._show(self._text + self._limits.writing_marker)

    async def finish(self, note: str = "", footer: str = "") -> None:
        """Final edit: the whole text, then the note and footer, with no writing marker."""
        tail = "\n".join(part for part in (note, footer) if part)
        if tail and self._too_long(self._text + "\n\n" + tail):
            await self._start_new_message()
        body = self._text or ("" if tail else "(no reply)")
        final = f"{body}\n\n{tail}" if body and tail else body or tail
        await self._show(final, force=True)

    def _too_long(self, text: str) -> bool:
        return self._limits.measure(text) > self._limits.max_length

    async def _roll_over_if_needed(self) -> None:
        while self._too_long(self._text + self._limits.writing_marker):
            head, tail = split_for_limit(
                self._text, self._limits.max_length - 2 * len(FENCE), self._limits.measure
            )
            head, tail = balance_fences(head, tail)
            await self._show(head, force=True)
            await self._start_new_message()
            self._text = tail

    async def _start_new_message(self) -> None:
        self._handle = None
        self._shown = ""
        self._text = ""

    async def _show(self, text: str, *, force: bool = False) -> None:
        if self._handle is None:
            await self._post(text)
            return
        if text == self._shown:
            return
        if not force and self._clock() - self._last_edit < self._limits.edit_interval:
            return
        await self._sink.edit(self._handle, text)
        self._shown = text
        self._last_edit = self._clock()

    async def _post(self, text: str) -> None:
        self._handle = await self._sink.post(text)
        self._shown = text
        self._last_edit = self._clock()
        self.messages_posted += 1


def split_for_limit(text: str, limit: int, measure: Callable[[str], int]) -> tuple[str, str]:
    """Split before `limit`, preferring a line break, then a space, over a hard cut."""
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if measure(text[:middle]) <= limit else (low, middle - 1)
    cut = low
    window = text[:cut]
    for separator in ("\n", " "):
        position = window.rfind(separator)
        if position > cut // 2:
            return text[: position + 1], text[position + 1 :]
    return window, text[cut:]


def balance_fences(head: str, tail: str) -> tuple[str, str]:
    """If `head` ends inside a ``` block, close it there and reopen it in `tail`."""
    if head.count(FENCE) % 2 == 0:
        return head, tail
    opening = head.rfind(FENCE)
    language = head[opening + len(FENCE) :].split("\n", 1)[0].strip()
    return head.rstrip("\n") + "\n" + FENCE, f"{FENCE}{language}\n{tail}"
