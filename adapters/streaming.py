"""One streaming renderer for every chat platform.

A reply arrives as text deltas. StreamingMessage shows it by editing a platform message at most
once per `edit_interval`, with a visible "writing" marker, and rolls over into a new message
before the platform's size limit without breaking a code block. `finish()` always leaves the
last message in a final state (marker gone, optional note and footer), even after an error.

StreamingColumns does the same for several replies shown side by side in one message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bot.domain.errors import EmberBotError
from bot.usecases.compare import ColumnsRun

log = logging.getLogger(__name__)

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
            if self._text:  # settle this message before the note goes into the next one
                await self._show(self._text, force=True)
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


# --------------------------------------------------------------------------- side-by-side columns

CUT_NOTE = "… (cut here: too long to show)"


@dataclass(frozen=True)
class Column:
    """One column of a side-by-side reply, as it should be shown right now."""

    title: str
    text: str = ""
    note: str = ""  # why it ended early, if it did
    writing: bool = True


class ColumnsSink(Protocol):
    """A platform's way to post and edit the one message that shows all the columns."""

    async def post(self, columns: Sequence[Column]) -> object: ...

    async def edit(self, handle: object, columns: Sequence[Column]) -> None: ...


class StreamingColumns:
    """Several replies streamed side by side into one message (e.g. /compare).

    The sink renders and fits the columns; this keeps their texts and paces the edits: one
    message, so all columns share one `edit_interval`. Columns may stream concurrently: edits
    are made one at a time, in order, so the final one lands last. `play()` always ends with
    every column final (no writing marker, its note if it ended early), whatever the run raised.
    """

    def __init__(
        self,
        sink: ColumnsSink,
        titles: Sequence[str],
        *,
        edit_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._columns = [Column(title) for title in titles]
        self._edit_interval = edit_interval
        self._clock = clock
        self._handle: object | None = None  # None until posted, or if the sink posts nothing
        self._started = False
        self._shown: list[Column] = []
        self._last_edit = float("-inf")
        self._editing = asyncio.Lock()

    async def start(self) -> None:
        """Post the message with every column still empty and writing."""
        if not self._started:
            self._handle = await self._sink.post(self._columns)
            self._started = True
            self._shown = list(self._columns)
            self._last_edit = self._clock()

    async def push(self, index: int, delta: str) -> None:
        column = self._columns[index]
        self._columns[index] = replace(column, text=column.text + delta)
        if self._due():
            await self._show()

    async def finish(self, finals: Sequence[tuple[str | None, str]]) -> None:
        """Final edit: per column its final text (None: as streamed) and note."""
        self._columns = [
            replace(column, text=column.text if text is None else text, note=note, writing=False)
            for column, (text, note) in zip(self._columns, finals, strict=True)
        ]
        await self._show(final=True)

    async def play(
        self, run: ColumnsRun, note_for: Callable[[EmberBotError], str], failure_note: str
    ) -> None:
        """Run the columns' generation into this message and finalise it, errors as notes."""
        await self.start()
        try:
            results = await run(self.push)
        except EmberBotError as error:
            await self.finish([(None, note_for(error))] * len(self._columns))
        except Exception:
            log.exception("streaming columns failed")
            await self.finish([(None, failure_note)] * len(self._columns))
        else:
            await self.finish([(text, note_for(err) if err else "") for text, err in results])

    def _due(self) -> bool:
        return self._clock() - self._last_edit >= self._edit_interval

    async def _show(self, *, final: bool = False) -> None:
        await self.start()
        async with self._editing:  # a column that was due while another edited may not be now
            if self._columns == self._shown or not (final or self._due()):
                return
            columns = list(self._columns)
            await self._sink.edit(self._handle, columns)
            self._shown = columns
            self._last_edit = self._clock()


def fit_column(
    column: Column,
    limit: int,
    measure: Callable[[str], int] = len,
    writing_marker: str = " ▌",
) -> str:
    """The column's text as shown, within `limit`: a placeholder while empty, the writing
    marker while streaming, the note last; a text too long is cut with a visible note."""
    text = column.text.strip() or ("…" if column.writing else "(no reply)")
    note = f"\n\n{column.note}" if column.note else ""
    tail = (writing_marker if column.writing else "") + note
    if measure(text + tail) <= limit:
        return text + tail
    tail = f"\n{CUT_NOTE}{tail}"
    head, _ = split_for_limit(text, max(limit - measure(tail), 0), measure)
    return head.rstrip() + tail
