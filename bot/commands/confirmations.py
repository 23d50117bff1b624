"""Yes/no proposals waiting for an answer (AutoSteer's edits), and carrying out the answer.

A proposal waits under an unguessable token for PROPOSAL_TTL seconds, bound to the channel it
was made in; at most MAX_PENDING wait (the oldest go first). With one process they wait in
memory (ProposalBook); when several processes share a PostgreSQL database they wait in it
(SharedProposals), so whichever process receives the click can answer. Only the
person who asked, or someone allowed to steer in that channel, may answer it. Apply goes
through the normal steering path (permission, steering rate limit, audit log); Cancel drops it.
Adapters call `answer(...)` from a button (Discord, Slack) or a y/n prompt (console).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from bot.commands.registry import Command, CommandContext, Invocation, Permission
from bot.commands.replies import Reply, error_reply
from bot.commands.runner import run_command
from bot.domain.errors import UserInputError
from bot.domain.types import Actor, FeatureEdit
from storage.interface import SharedState, StoredProposal

if TYPE_CHECKING:
    from bot.domain.types import SessionKey
    from bot.usecases.service import EmberService

PROPOSAL_TTL = 15 * 60.0
MAX_PENDING = 500
EXPIRED = "That proposal has expired or was already answered. Run /autosteer again."


@dataclass(frozen=True)
class Proposal:
    session: str  # str(SessionKey)
    proposer: Actor
    edits: tuple[FeatureEdit, ...]
    expires_at: float = 0.0  # by the book's clock; kept by the database when shared


def new_token() -> str:
    return secrets.token_urlsafe(18)  # 24 URL-safe characters


class ProposalBook:
    """Pending proposals by token, oldest first, in memory; expired ones are forgotten as time
    passes."""

    def __init__(
        self,
        ttl: float = PROPOSAL_TTL,
        capacity: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._pending: OrderedDict[str, Proposal] = OrderedDict()

    async def add(self, session: SessionKey, proposer: Actor, edits: list[FeatureEdit]) -> str:
        self._forget_expired()
        while len(self._pending) >= self._capacity:
            self._pending.popitem(last=False)
        token = new_token()
        expires_at = self._clock() + self._ttl
        self._pending[token] = Proposal(str(session), proposer, tuple(edits), expires_at)
        return token

    async def get(self, token: str) -> Proposal | None:
        self._forget_expired()
        return self._pending.get(token)

    async def take(self, token: str) -> Proposal | None:
        """Remove and return the proposal: whoever takes it first is the one who answers."""
        self._forget_expired()
        return self._pending.pop(token, None)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._pending and next(iter(self._pending.values())).expires_at <= now:
            self._pending.popitem(last=False)


class SharedProposals:
    """The same, kept in the database that several processes share."""

    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    async def add(self, session: SessionKey, proposer: Actor, edits: list[FeatureEdit]) -> str:
        token = new_token()
        stored = StoredProposal(str(session), proposer.user_id, proposer.display_name, tuple(edits))
        await self._shared.add_proposal(token, stored, PROPOSAL_TTL, MAX_PENDING)
        return token

    async def get(self, token: str) -> Proposal | None:
        return _proposal(await self._shared.get_proposal(token))

    async def take(self, token: str) -> Proposal | None:
        """Remove and return the proposal: one caller in one process gets it."""
        return _proposal(await self._shared.take_proposal(token))


def _proposal(stored: StoredProposal | None) -> Proposal | None:
    if stored is None:
        return None
    return Proposal(stored.session, Actor(stored.proposer_id, stored.proposer_name), stored.edits)


# One book per service: the CommandContext is frozen and holds no command-layer state.
_BOOKS: WeakKeyDictionary[EmberService, ProposalBook | SharedProposals] = WeakKeyDictionary()


def proposals(service: EmberService) -> ProposalBook | SharedProposals:
    if service not in _BOOKS:
        shared = service.shared_state
        _BOOKS[service] = ProposalBook() if shared is None else SharedProposals(shared)
    return _BOOKS[service]


async def answer(ctx: CommandContext, token: str, accept: bool, invocation: Invocation) -> Reply:
    """Apply (accept) or drop the proposal `token` for whoever `invocation` says is answering.

    Refusals (unknown or expired token, another channel, not allowed to answer, no permission
    or over the rate limit to apply) come back as error replies and leave the proposal pending
    where it still can be answered.
    """
    proposal = await proposals(ctx.service).get(token)
    if proposal is None:
        return error_reply(EXPIRED)
    if proposal.session != str(invocation.session):
        return error_reply("That proposal was made in another channel.")
    if invocation.actor.user_id != proposal.proposer.user_id and not invocation.can_steer:
        return error_reply(
            f"Only {proposal.proposer.display_name} or someone who may steer here can answer."
        )
    if accept:
        return await run_command(ctx, APPLY, replace(invocation, args={"token": token}))
    await proposals(ctx.service).take(token)
    return Reply(f"{invocation.actor.display_name} cancelled the proposal; nothing changed.")


async def _apply(ctx: CommandContext, inv: Invocation) -> Reply:
    proposal = await proposals(ctx.service).take(inv.args["token"])
    if proposal is None:  # answered while this answer waited
        raise UserInputError(EXPIRED)
    variant = await ctx.service.steering.apply(
        inv.session, list(proposal.edits), inv.actor, action="autosteer.apply"
    )
    edits = "; ".join(f'"{e.feature.label}" {e.value:+.2f}' for e in proposal.edits)
    return Reply(f'{inv.actor.display_name} applied to variant "{variant.name}": {edits}')


# Not in the registry (nobody types it): the steering path that Apply runs through.
APPLY = Command(
    ("autosteer", "apply"),
    "Apply AutoSteer's proposed edits",
    _apply,
    permission=Permission.STEER,
)
