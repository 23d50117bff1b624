"""Who may steer and reset: configured Slack user IDs and members of configured user groups."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

MEMBERSHIP_TTL = 300.0  # seconds a user group's member list is trusted


class SteerPermissions:
    """Nobody configured means everyone may steer. Group lookups fail closed."""

    def __init__(
        self,
        client: AsyncWebClient,
        users: frozenset[str],
        usergroups: frozenset[str],
        *,
        ttl: float = MEMBERSHIP_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._users = users
        self._usergroups = usergroups
        self._ttl = ttl
        self._clock = clock
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def allows(self, user_id: str) -> bool:
        if not self._users and not self._usergroups:
            return True
        if user_id in self._users:
            return True
        for group in sorted(self._usergroups):
            if user_id in await self._group_members(group):
                return True
        return False

    async def _group_members(self, group: str) -> frozenset[str]:
        cached = self._members.get(group)
        if cached and self._clock() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._client.usergroups_users_list(usergroup=group)
        except SlackApiError as error:
            log.warning(
                "could not list members of user group %s: %s", group, error.response.get("error")
            )
            return frozenset()
        members = frozenset(response.get("users") or [])
        self._members[group] = (self._clock(), members)
        return members
