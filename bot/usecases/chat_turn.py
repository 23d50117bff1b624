"""The chat turn every adapter runs: a message in, a reply streamed into the adapter's sink.

`run_chat_turn` admits the turn once (a shutdown refuses it, and a drain waits for the final
edit too), streams the reply into the sink, and always hands the sink an outcome to finish
with: the text, a one-line note when the turn was refused, failed or cut short, and the
steering footer. Adapters only decide how those look on their platform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bot.domain.errors import (
    UNEXPECTED_ERROR,
    EmberBotError,
    GenerationAbortedError,
    UserInputError,
)
from bot.domain.summary import steering_footer
from bot.domain.types import Actor, SessionKey
from bot.ops.lifecycle import ShuttingDownError

if TYPE_CHECKING:
    from bot.usecases.service import EmberService

log = logging.getLogger(__name__)

# answered: the whole reply; cut_short: part of it (`error` says why); refused: nothing was
# stored (bad input, a limit, shutdown); failed: an unexpected error, logged.
TurnKind = Literal["answered", "cut_short", "refused", "failed"]


@dataclass(frozen=True)
class TurnOutcome:
    kind: TurnKind
    text: str = ""
    note: str = ""  # one line for the person, "" when the reply is whole
    footer: str = ""  # the steering in effect, when the model answered
    error: EmberBotError | None = None


class TurnSink(Protocol):
    """Where an adapter shows one turn. `begin` runs once the turn is admitted."""

    async def begin(self) -> None: ...

    async def queued(self, position: int) -> None: ...

    async def push(self, delta: str) -> None: ...

    async def finish(self, outcome: TurnOutcome) -> None: ...


def ended_early_note(error: EmberBotError) -> str:
    """Why a reply ended early, in words for the note under it."""
    if isinstance(error, UserInputError | GenerationAbortedError):
        return error.user_message  # a refusal or a guard's stop explains itself
    return f"Reply cut short: {error.user_message}"


async def run_chat_turn(
    service: EmberService, session: SessionKey, actor: Actor, text: str, sink: TurnSink
) -> TurnOutcome:
    try:
        async with service.lifecycle.track():
            await sink.begin()
            outcome = await _outcome(service, session, actor, text, sink)
            await sink.finish(outcome)
            return outcome
    except ShuttingDownError as error:  # refused before anything began
        outcome = TurnOutcome("refused", note=error.user_message, error=error)
        await sink.finish(outcome)
        return outcome


async def _outcome(
    service: EmberService, session: SessionKey, actor: Actor, text: str, sink: TurnSink
) -> TurnOutcome:
    try:
        result = await service.chat.turn(session, actor, text, sink.push, sink.queued)
    except UserInputError as error:  # bad input, rate limits: nothing was stored
        return TurnOutcome("refused", note=error.user_message, error=error)
    except Exception:
        log.exception("chat turn failed in %s", session)
        return TurnOutcome("failed", note=UNEXPECTED_ERROR)
    footer = steering_footer(result.variant)
    if result.error is None:
        return TurnOutcome("answered", result.text, footer=footer)
    note = ended_early_note(result.error)
    return TurnOutcome("cut_short", result.text, note, footer, result.error)
