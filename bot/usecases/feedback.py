"""Feedback on replies: a 👍 or 👎 recorded in the channel's audit log with the variant and the
steering the reply was made with, so people can see which steering others liked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.domain.errors import UserInputError
from bot.domain.types import Actor, SessionKey
from bot.usecases.deps import Deps

Rating = Literal["good", "bad"]
RATINGS: tuple[Rating, ...] = ("good", "bad")
FEEDBACK_ACTION = "feedback"
MAX_STEERING_CHARS = 500  # the steering summary kept with a rating


@dataclass(frozen=True)
class RatedReply:
    """What a reply was made with, as its feedback buttons carry it."""

    variant: str
    steering: str  # the footer's summary, e.g. "pirate speech +0.8"


class Feedback:
    def __init__(self, deps: Deps) -> None:
        self._store = deps.store

    async def record(
        self, session: SessionKey, actor: Actor, rating: str, reply: RatedReply
    ) -> None:
        """Store one rating of one reply; an unknown rating changes nothing."""
        if rating not in RATINGS:
            raise UserInputError(f"Unknown feedback {rating[:20]!r}: use one of {RATINGS}.")
        detail = {
            "rating": rating,
            "variant": reply.variant[:100],
            "steering": reply.steering[:MAX_STEERING_CHARS],
        }
        await self._store.record_audit(
            session, actor=str(actor), action=FEEDBACK_ACTION, detail=detail
        )
