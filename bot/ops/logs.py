"""Logging: text or JSON lines, request and session ids, and secrets redacted from every record.

Redaction happens where records are made (a log record factory), so it covers every logger
and every handler, third-party ones included: configured secret values (every SecretStr
setting, the API key and bot tokens among them) and token-shaped strings (Slack `xox?-`/`xapp-`
tokens, `Bearer ...` credentials, Discord bot tokens) become `[redacted]` in messages,
tracebacks and stack traces.

    with log_context(session=str(session)):   # every record inside carries both ids
        ...
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO
from urllib.parse import quote

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from bot.settings import Settings

REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(session)s] %(message)s"
# Libraries that log every request at INFO; they speak up at WARNING unless we debug.
CHATTY_LOGGERS = ("httpx", "httpcore", "aiosqlite", "slack_sdk", "slack_bolt", "discord")
MIN_SECRET_LENGTH = 4  # shorter values would shred ordinary words out of the logs

_TOKEN_SHAPES = re.compile(
    r"\b(?:xox[a-z]|xapp)-[A-Za-z0-9-]+"  # Slack bot, user and app-level tokens
    r"|\b[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{25,}"  # Discord bot tokens
)
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20)[A-Za-z0-9._~+/=-]{8,}")

_request_id: ContextVar[str] = ContextVar("log_request_id", default="-")
_session: ContextVar[str] = ContextVar("log_session", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


@contextmanager
def log_context(*, session: str | None = None, request_id: str | None = None) -> Iterator[str]:
    """Tag records logged inside with a session and a request id (kept if one is already set)."""
    current = _request_id.get()
    request = request_id or (current if current != "-" else new_request_id())
    request_token = _request_id.set(request)
    session_token = _session.set(session) if session is not None else None
    try:
        yield request
    finally:
        _request_id.reset(request_token)
        if session_token is not None:
            _session.reset(session_token)


class Redactor:
    """Replaces secret values and token-shaped strings in text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants = {
            form
            for secret in secrets
            if len(secret) >= MIN_SECRET_LENGTH
            for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1])
        }
        longest_first = sorted(variants, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, longest_first))) if variants else None

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        text = _TOKEN_SHAPES.sub(REDACTED, text)
        return _BEARER.sub(rf"\1\2{REDACTED}", text)

    def scrub(self, record: logging.LogRecord) -> None:
        """Redact a record in place: message (args merged in), traceback and stack."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed call; the handler will report it, unredacted args aside
            message = str(record.msg)
        record.msg, record.args = self(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self(record.exc_text)
        if record.stack_info:
            record.stack_info = self(record.stack_info)


def secret_values(*settings: BaseSettings) -> list[str]:
    """Every non-empty SecretStr setting of these settings objects (the core's, a platform's)."""
    values = (getattr(each, name) for each in settings for name in type(each).model_fields)
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "session": getattr(record, "session", "-"),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class LoggingSetup:
    """What configure_logging installed; `close()` puts the previous state back."""

    def __init__(self, handler: logging.Handler, redactor: Redactor) -> None:
        self.handler = handler
        self.redactor = redactor
        self._previous_factory = logging.getLogRecordFactory()
        previous = self._previous_factory

        def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.request_id = _request_id.get()
            record.session = _session.get()
            redactor.scrub(record)
            return record

        logging.setLogRecordFactory(make_record)
        logging.getLogger().addHandler(handler)

    def close(self) -> None:
        logging.setLogRecordFactory(self._previous_factory)
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def configure_logging(
    settings: Settings, stream: TextIO | None = None, *, platforms: Iterable[BaseSettings] = ()
) -> LoggingSetup:
    """Log to `stream` (stderr) at LOG_LEVEL in LOG_FORMAT, redacting every secret: the core's
    and those in the chat platforms' settings (`platforms`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    level = logging.getLevelName(settings.log_level)
    logging.getLogger().setLevel(level)
    for name in CHATTY_LOGGERS:
        quiet = max(level, logging.WARNING)
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else quiet)
    return LoggingSetup(handler, Redactor(secret_values(settings, *platforms)))
