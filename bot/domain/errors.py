"""One error taxonomy for everything that can go wrong talking to the backend or with input.

Every error carries `user_message`: a short, specific, actionable line safe to show in a chat.
"""

from __future__ import annotations

import math

UNEXPECTED_ERROR = "Something went wrong on our side; it has been logged."


class EmberBotError(Exception):
    """Base class. `str(error)` is the user-facing message."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class SetupError(Exception):
    """A command cannot start: the database, a platform or the backend refused or is out of
    reach. `str(error)` is one line naming the fault and its fix; the CLI prints it instead of a
    traceback (bot.app.run_blocking) and exits non-zero."""


class UserInputError(EmberBotError):
    """The user's command or arguments were invalid; nothing was changed."""


class BackendError(EmberBotError):
    """The Ember backend could not serve the request."""


class RateLimitedError(BackendError):
    def __init__(self, retry_after: float | None = None) -> None:
        wait = f" in {max(1, round(retry_after))} s" if retry_after else " in a few seconds"
        super().__init__(f"The model backend is rate limited — try again{wait}.")
        self.retry_after = retry_after


class BackendUnavailableError(BackendError):
    def __init__(self, detail: str = "") -> None:
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"The model backend is unavailable right now{suffix}. Try again shortly.")


class UnauthorizedError(BackendError):
    def __init__(self) -> None:
        super().__init__(
            "The model backend rejected our API key. Check GOODFIRE_API_KEY "
            "(and GOODFIRE_BASE_URL)."
        )


class OutOfCreditsError(BackendError):
    def __init__(self) -> None:
        super().__init__("The model backend account is out of credits.")


class InvalidRequestError(BackendError):
    """The backend refused the request; `detail` is the server's own message."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"The model backend refused the request: {detail}")
        self.detail = detail


class NotFoundError(BackendError):
    def __init__(self, detail: str = "not found") -> None:
        super().__init__(f"The model backend could not find that: {detail}")


class GenerationAbortedError(BackendError):
    def __init__(self, reason: str = "a guard condition fired") -> None:
        super().__init__(f"Generation stopped: {reason}.")


class BackendTimeoutError(BackendError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"The model backend did not answer within {seconds:g} s. Try again.")


class DeliveryFailedError(EmberBotError):
    """The chat platform failed to show part of a reply; generation stopped there."""

    def __init__(self) -> None:
        super().__init__("The chat platform failed to show the rest of this reply; it stops here.")


class RefusedError(UserInputError):
    """Refused for load, not for what was asked. `action`/`scope` label the metric."""

    def __init__(self, message: str, *, action: str, scope: str) -> None:
        super().__init__(message)
        self.action = action
        self.scope = scope


class SlowDownError(RefusedError):
    def __init__(self, wait: float, *, action: str, scope: str) -> None:
        seconds = max(1, math.ceil(wait))
        who = "Slow down" if scope == "user" else "This channel is busy"
        super().__init__(f"{who} — try again in {seconds} s.", action=action, scope=scope)
        self.retry_after = wait


class BackendBusyError(RefusedError):
    def __init__(self, waiting: int) -> None:
        super().__init__(
            f"The bot is busy: {waiting} requests are already waiting. Try again in a minute.",
            action="backend",
            scope="queue",
        )
