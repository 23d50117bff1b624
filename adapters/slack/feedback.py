"""What a click on the 👍/👎 feedback buttons under a streamed reply (render.feedback_block) does.

Each button's value carries the rating, the variant and the steering the reply was made with
(steering may change before someone clicks), and a click records them in the channel's audit
log through the feedback use case; the clicker alone is thanked.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from adapters.slack.commands import Ack, clicked_by
from adapters.slack.render import FEEDBACK_ACTION
from adapters.slack.replies import Respond
from bot.commands.registry import CommandContext
from bot.domain.errors import UserInputError
from bot.usecases.feedback import RatedReply

log = logging.getLogger(__name__)

THANKS = "Thanks — noted with the steering this reply was made with."


class SlackFeedback:
    def __init__(self, ctx: CommandContext) -> None:
        self._ctx = ctx

    def register(self, app: AsyncApp) -> None:
        app.action(FEEDBACK_ACTION)(self.on_feedback)

    async def on_feedback(
        self, ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        session, actor = clicked_by(body)
        try:
            choice = json.loads(action["value"])
            rating = str(choice["rating"])
            rated = RatedReply(str(choice["variant"]), str(choice.get("steering", "")))
            await self._ctx.service.feedback.record(session, actor, rating, rated)
        except (KeyError, TypeError, ValueError, UserInputError) as error:
            log.info("ignored a malformed feedback click: %s", error)
            return
        await respond(text=THANKS, response_type="ephemeral", replace_original=False)
