"""A loopback fake of Discord for driving a real discord.py client in tests.

FakeDiscord is the REST API (aiohttp on 127.0.0.1, port 0): it answers the routes a bot uses,
keeps the messages it was sent, and records every request. Point discord.py at it by setting
`discord.http.Route.BASE = fake.api_base` (webhooks and interaction callbacks use Route too).

Message payloads are checked the way Discord checks them (discord_components.py: legacy rows,
and Components v2 layouts with their flag, component and text limits); a refused one is
answered 400 "Invalid Form Body" and its reason kept in `refusals`.

FakeGateway plays the gateway's part without a websocket: it builds READY, GUILD_CREATE,
MESSAGE_CREATE and INTERACTION_CREATE payloads and feeds them to the client's own connection
state parsers, so discord.py parses them exactly as it would live events.

    async with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.api_base
        await client.login(TOKEN)
        gateway = FakeGateway(client)
        gateway.connect()
        token = gateway.slash(MOD, "steer", feature="pirate", value=0.5)
        followup = await fake.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{token}")
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord
from aiohttp import web

from tests.support.discord_components import IS_COMPONENTS_V2, buttons, message_problem

API_PREFIX = "/api/v10"
TOKEN = "fake-discord-bot-token"
APPLICATION_ID = 900_000_000_000_000_001  # a bot user shares its application's ID
GUILD_ID = 910_000_000_000_000_001
GENERAL_CHANNEL = 920_000_000_000_000_001
LISTEN_CHANNEL = 920_000_000_000_000_002
DM_CHANNEL = 920_000_000_000_000_009
GROUP_DM_CHANNEL = 920_000_000_000_000_010  # where only a user install can reach the bot
STEERER_ROLE = 930_000_000_000_000_001
TIMESTAMP = "2026-01-01T00:00:00+00:00"
EPHEMERAL = 64  # message flag
WAIT_SECONDS = 5.0
_BODY = web.RequestKey("body", object)
_FILES = web.RequestKey("files", tuple)


@dataclass(frozen=True)
class FakeUser:
    id: int
    name: str
    roles: tuple[int, ...] = ()
    permissions: discord.Permissions = field(default_factory=discord.Permissions.none)
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
        }

    def member_payload(self) -> dict[str, Any]:
        return {
            "roles": [str(role) for role in self.roles],
            "joined_at": TIMESTAMP,
            "deaf": False,
            "mute": False,
            "flags": 0,
        }


BOT_USER = FakeUser(APPLICATION_ID, "Ember", bot=True)


@dataclass(frozen=True)
class FakeAttachment:
    """A file a user attaches to a slash command option; the fake's CDN serves its bytes."""

    filename: str
    content: bytes
    content_type: str = "application/json"


class FakeClock:
    """A clock tests control: `advance()` it by hand, or give it a `step` to move on every read."""

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class DiscordCall:
    """One request as received: path is relative to the API base, json is the JSON body (for
    multipart requests, their payload_json part), files are the uploaded (name, bytes)."""

    method: str
    path: str
    json: Any
    files: tuple[tuple[str, bytes], ...]
    at: float

    @property
    def content(self) -> str | None:
        return self.json.get("content") if isinstance(self.json, dict) else None

    @property
    def carries_message(self) -> bool:
        """True for every payload that posts or edits message text (content, or a v2 layout)."""
        body = self.json if isinstance(self.json, dict) else {}
        data = body.get("data") or {}
        layout = (body.get("flags") or 0) & IS_COMPONENTS_V2 or (
            isinstance(data, dict) and (data.get("flags") or 0) & IS_COMPONENTS_V2
        )
        return "content" in body or "content" in data or bool(layout)

    @property
    def allowed_mentions(self) -> Any:
        body = self.json if isinstance(self.json, dict) else {}
        if "data" in body:  # an interaction callback wraps the message in "data"
            body = body["data"] or {}
        return body.get("allowed_mentions")


class FakeDiscord:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.calls: list[DiscordCall] = []
        self.messages: dict[int, dict[str, Any]] = {}  # current state, by message id
        self.synced_commands: dict[int | None, list[dict[str, Any]]] = {}  # by guild (None: global)
        self.clicked_messages: dict[str, int] = {}  # component interaction token -> message id
        self.attachments: dict[int, bytes] = {}  # what the CDN serves, by attachment id
        self.refusals: list[str] = []  # why message payloads were refused, in order
        self._clock = clock
        self._ids = itertools.count(950_000_000_000_000_001)
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.api_base = ""

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(middlewares=[self._record])
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("POST", "/interactions/{id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._no_content),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("POST", "/channels/{channel}/typing", self._no_content),
            ("PUT", "/applications/{app}/commands", self._sync_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._sync_commands),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_get("/attachments/{id}/{filename}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.api_base = f"http://127.0.0.1:{port}{API_PREFIX}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- test helpers

    def calls_to(self, method: str, path_pattern: str) -> list[DiscordCall]:
        """Calls whose path matches the regex `path_pattern` in full."""
        return [c for c in self.calls if c.method == method and re.fullmatch(path_pattern, c.path)]

    def interaction_calls(self, token: str) -> list[DiscordCall]:
        return [c for c in self.calls if f"/{token}" in c.path]

    def message_calls(self) -> list[DiscordCall]:
        return [c for c in self.calls if c.carries_message]

    def channel_messages(self, channel_id: int) -> list[str]:
        """The current text of the messages posted in a channel, oldest first."""
        return [m["content"] for m in self.messages.values() if m["channel_id"] == str(channel_id)]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds after some request; fail after WAIT_SECONDS."""
        async with asyncio.timeout(WAIT_SECONDS):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for_call(
        self, method: str, path_pattern: str, count: int = 1
    ) -> list[DiscordCall]:
        await self.wait_for(lambda: len(self.calls_to(method, path_pattern)) >= count)
        return self.calls_to(method, path_pattern)

    def attach(self, attachment_id: int, file: FakeAttachment) -> dict[str, Any]:
        """Serve `file` from the CDN; returns its attachment payload."""
        self.attachments[attachment_id] = file.content
        host = self.api_base.removesuffix(API_PREFIX)
        url = f"{host}/attachments/{attachment_id}/{file.filename}"
        return {
            "id": str(attachment_id),
            "filename": file.filename,
            "size": len(file.content),
            "url": url,
            "proxy_url": url,
            "content_type": file.content_type,
        }

    # ---- plumbing

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body, files = await _read_body(request)
        request[_BODY] = body
        request[_FILES] = files
        self.calls.append(
            DiscordCall(
                request.method,
                request.path.removeprefix(API_PREFIX),
                body,
                files,
                self._clock(),
            )
        )
        try:
            return await handler(request)
        finally:
            self._arrived.set()

    def _refused(self, request: web.Request, body: Any, message_id: int | None = None) -> Any:
        """Discord's 400 for a payload it would not take, or None."""
        existing = self.messages.get(message_id or 0) or {}
        filenames = [name for name, _ in request[_FILES]]
        filenames += [a["filename"] for a in existing.get("attachments") or []]
        problem = message_problem(body or {}, filenames, existing.get("flags") or 0)
        if not problem:
            return None
        self.refusals.append(problem)
        error = {"code": 50035, "message": f"Invalid Form Body: {problem}", "errors": {}}
        return _json(error, status=400)

    def _message(
        self,
        channel_id: int | str,
        body: dict[str, Any],
        flags: int = 0,
        files: tuple[tuple[str, bytes], ...] = (),
    ) -> dict:
        message_id = next(self._ids)
        message = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "type": 0,
            "content": body.get("content") or "",
            "author": BOT_USER.payload(),
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [_attachment(next(self._ids), name, data) for name, data in files],
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "flags": flags | (body.get("flags") or 0),
            "components": body.get("components") or [],
        }
        self.messages[message_id] = message
        return message

    def _update(self, message_id: int, body: dict[str, Any]) -> web.Response:
        message = self.messages.get(message_id)
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        if "content" in body:
            message["content"] = body["content"] or ""
        for key in ("embeds", "components"):
            if key in body:
                message[key] = body[key] or []
        message["flags"] |= body.get("flags") or 0
        message["edited_timestamp"] = TIMESTAMP
        return _json(message)

    # ---- routes

    async def _me(self, request: web.Request) -> web.Response:
        return _json(BOT_USER.payload())

    async def _application(self, request: web.Request) -> web.Response:
        owner = FakeUser(APPLICATION_ID + 1, "owner").payload()
        return _json(
            {
                "id": str(APPLICATION_ID),
                "name": "Ember",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner,
                "verify_key": "00",
                "flags": 0,
            }
        )

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        kind = body["type"]
        data = body.get("data") or {}
        interaction: dict[str, Any] = {"id": request.match_info["id"], "type": 2}
        response: dict[str, Any] = {"interaction": interaction}
        edited = self._clicked(request) if kind == 7 else None
        if kind in (4, 7) and (refusal := self._refused(request, data, edited)):
            return refusal
        if kind in (4, 5):  # a message, or "thinking…" that a follow-up will fill in
            interaction["response_message_loading"] = kind == 5
            interaction["response_message_ephemeral"] = bool((data.get("flags") or 0) & EPHEMERAL)
            if kind == 4:
                response["resource"] = {"type": 4, "message": self._message(0, data)}
        elif kind == 7:  # a button's message updated at once
            clicked = self.clicked_messages[request.match_info["token"]]
            self._update(clicked, data)
        return _json(response)

    def _clicked(self, request: web.Request) -> int | None:
        return self.clicked_messages.get(request.match_info.get("token", ""))

    async def _followup(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        return self._refused(request, body) or _json(self._message(0, body, files=request[_FILES]))

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        message = request.match_info["message"]
        target = self._clicked(request) if message == "@original" else int(message)
        if refusal := self._refused(request, request[_BODY], target):
            return refusal
        if message == "@original":
            clicked = self.clicked_messages.get(request.match_info["token"])
            if clicked is None:  # a deferred slash command's "thinking…" becomes the reply
                return _json(self._message(0, request[_BODY]))
            return self._update(clicked, request[_BODY])
        return self._update(int(message), request[_BODY])

    async def _create_message(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        channel = request.match_info["channel"]
        return self._refused(request, body) or _json(
            self._message(channel, body, files=request[_FILES])
        )

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = int(request.match_info["message"])
        return self._refused(request, request[_BODY], message) or self._update(
            message, request[_BODY]
        )

    async def _cdn(self, request: web.Request) -> web.Response:
        content = self.attachments.get(int(request.match_info["id"]))
        if content is None:
            return web.Response(status=404)
        return web.Response(body=content)

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _sync_commands(self, request: web.Request) -> web.Response:
        guild = request.match_info.get("guild")
        commands = [
            {**command, "id": str(next(self._ids)), "application_id": str(APPLICATION_ID)}
            for command in request[_BODY]
        ]
        self.synced_commands[int(guild) if guild else None] = commands
        return _json(commands)


def _attachment(attachment_id: int, filename: str, data: bytes) -> dict[str, Any]:
    url = f"https://cdn.invalid/attachments/{attachment_id}/{filename}"
    return {
        "id": str(attachment_id),
        "filename": filename,
        "size": len(data),
        "url": url,
        "proxy_url": url,
    }


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py parses a body only when Content-Type is exactly "application/json"
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


async def _read_body(request: web.Request) -> tuple[Any, tuple[tuple[str, bytes], ...]]:
    if not request.can_read_body:
        return None, ()
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        files = tuple(
            (part.filename, part.file.read())
            for part in form.values()
            if isinstance(part, web.FileField)
        )
        payload = form.get("payload_json")
        return (json.loads(payload) if isinstance(payload, str) else None), files
    raw = await request.read()
    return (json.loads(raw) if raw else None), ()


# --------------------------------------------------------------------------- gateway


def _role(role_id: int, name: str) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "color": 0,
        "hoist": False,
        "position": 0 if role_id == GUILD_ID else 1,
        "permissions": "0",
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def _text_channel(channel_id: int, name: str) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(GUILD_ID),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def _option(name: str, value: Any) -> dict[str, Any]:
    kinds = {int: 4, float: 10, str: 3}
    return {"name": name, "type": kinds[type(value)], "value": value}


class FakeGateway:
    """Feeds gateway events to a client through `client._connection.parsers`. Give it the
    FakeDiscord to click buttons on the messages the bot sent there."""

    def __init__(self, client: discord.Client, fake: FakeDiscord | None = None) -> None:
        self._client = client
        self._fake = fake
        self._ids = itertools.count(960_000_000_000_000_001)

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self._client._connection.parsers[event](data)

    def connect(self) -> None:
        """READY with one unavailable guild, then its GUILD_CREATE."""
        self.dispatch(
            "READY",
            {
                "v": 10,
                "user": BOT_USER.payload(),
                "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                "session_id": "fake-session",
                "resume_gateway_url": "wss://gateway.invalid",
                "application": {"id": str(APPLICATION_ID), "flags": 0},
            },
        )
        self.dispatch("GUILD_CREATE", self._guild())

    def _guild(self) -> dict[str, Any]:
        return {
            "id": str(GUILD_ID),
            "name": "Test server",
            "icon": None,
            "owner_id": str(APPLICATION_ID + 1),
            "unavailable": False,
            "member_count": 3,
            "large": False,
            "joined_at": TIMESTAMP,
            "roles": [_role(GUILD_ID, "@everyone"), _role(STEERER_ROLE, "Steerers")],
            "channels": [
                _text_channel(GENERAL_CHANNEL, "general"),
                _text_channel(LISTEN_CHANNEL, "ask-ember"),
            ],
            "members": [],
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "premium_progress_bar_enabled": False,
        }

    def message(
        self,
        author: FakeUser,
        content: str,
        *,
        channel_id: int = GENERAL_CHANNEL,
        mentions_bot: bool = False,
    ) -> int:
        """A user's message; in DM_CHANNEL it is a direct message. Returns its id."""
        message_id = next(self._ids)
        data: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": author.payload(),
            "content": content,
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [BOT_USER.payload()] if mentions_bot else [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if channel_id != DM_CHANNEL:
            data |= {"guild_id": str(GUILD_ID), "member": author.member_payload()}
        self.dispatch("MESSAGE_CREATE", data)
        return message_id

    def slash(self, user: FakeUser, command: str, **options: Any) -> str:
        """Run `/command` ("variant new" for a subcommand); returns the interaction token."""
        return self._command(2, user, command, options, focused=None)

    def slash_in_group_dm(self, user: FakeUser, command: str, **options: Any) -> str:
        """`/command` in a group DM the bot is not in, through `user`'s own install of the app:
        no guild, no member, context 2 (private channel), owned by the user."""
        private = {
            "guild_id": None,
            "guild_locale": None,
            "member": None,
            "user": user.payload(),
            "channel_id": str(GROUP_DM_CHANNEL),
            "channel": {"id": str(GROUP_DM_CHANNEL), "type": 3, "recipients": [user.payload()]},
            "context": 2,
            "authorizing_integration_owners": {"1": str(user.id)},
        }
        return self._command(2, user, command, options, focused=None, overrides=private)

    def autocomplete(self, user: FakeUser, command: str, focused: str, **options: Any) -> str:
        return self._command(4, user, command, options, focused=focused)

    def click(self, user: FakeUser, message_id: int, label: str) -> str:
        """Click the button labelled `label` on a message the bot sent; returns the token."""
        assert self._fake is not None, "FakeGateway(client, fake) to click"
        message = self._fake.messages[message_id]
        button = next((b for b in buttons(message["components"]) if b.get("label") == label), None)
        assert button is not None, f"no button {label!r} on message {message_id}"
        data = {"custom_id": button["custom_id"], "component_type": 2}
        channel = {**message, "channel_id": str(GENERAL_CHANNEL)}  # follow-ups are stored at 0
        token = self._interaction(3, user, data, message=channel)
        self._fake.clicked_messages[token] = message_id
        return token

    def _command(
        self,
        kind: int,
        user: FakeUser,
        command: str,
        options: dict[str, Any],
        focused: str | None,
        overrides: dict[str, Any] | None = None,
    ) -> str:
        values = []
        files: dict[str, Any] = {}
        for name, value in options.items():
            if isinstance(value, FakeAttachment):
                assert self._fake is not None, "FakeGateway(client, fake) to attach files"
                file_id = next(self._ids)
                files[str(file_id)] = self._fake.attach(file_id, value)
                option = {"name": name, "type": 11, "value": str(file_id)}
            else:
                option = _option(name, value)
            if name == focused:
                option["focused"] = True
            values.append(option)
        *group, name = command.split()
        data: dict[str, Any] = {"id": str(next(self._ids)), "name": name, "type": 1}
        if files:
            data["resolved"] = {"attachments": files}
        if group:
            data = {
                **data,
                "name": group[0],
                "options": [{"name": name, "type": 1, "options": values}],
            }
        else:
            data["options"] = values
        return self._interaction(kind, user, data, overrides)

    def _interaction(
        self,
        kind: int,
        user: FakeUser,
        data: dict[str, Any],
        overrides: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        interaction_id = next(self._ids)
        token = f"interaction-token-{interaction_id}"
        member = user.member_payload() | {
            "user": user.payload(),
            "permissions": str(user.permissions.value),
        }
        payload = {
            "id": str(interaction_id),
            "application_id": str(APPLICATION_ID),
            "type": kind,
            "token": token,
            "version": 1,
            "guild_id": str(GUILD_ID),
            "channel_id": str(GENERAL_CHANNEL),
            "channel": _text_channel(GENERAL_CHANNEL, "general"),
            "member": member,
            "data": data,
            "app_permissions": str(discord.Permissions.all().value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 0,
            "attachment_size_limit": 8 * 1024 * 1024,
            **extra,
            **(overrides or {}),
        }
        self.dispatch("INTERACTION_CREATE", {k: v for k, v in payload.items() if v is not None})
        return token
