"""`ember-bot slack ...`: the manifest agrees with the registry; missing or wrong credentials
are reported in one clear line each."""

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from adapters.slack.app import SlackBot, SlackSetupError, main
from adapters.slack.manifest import build_manifest
from bot.app import open_context
from bot.commands.catalog import build_registry
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber
from tests.support.fake_slack import FakeSlack, form_body, settings_for, signed_headers

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "slack" / "manifest.yml"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_COMMAND_PREFIX",
        "GOODFIRE_API_KEY",
        "GOODFIRE_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_checked_in_manifest_matches_the_registry():
    manifest = yaml.safe_load(MANIFEST.read_text())
    registry = build_registry()
    assert manifest == build_manifest(registry), "regenerate: ember-bot slack manifest"
    commands = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert commands == [f"/{name}" for name in registry.top_level_names()]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {
        "app_mention",
        "assistant_thread_started",
        "assistant_thread_context_changed",
        "message.channels",
        "message.groups",
        "message.im",
    }
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "app_mentions:read",
        "chat:write",
        "commands",
        "files:write",
        "im:history",
        "usergroups:read",
        "assistant:write",
    } <= scopes
    assert manifest["features"]["assistant_view"]["assistant_description"]


def test_manifest_command_prints_prefixed_names_and_http_urls(clean_env, capsys):
    clean_env.setenv("SLACK_COMMAND_PREFIX", "ember-")
    url = "https://bot.example.org/slack/events"
    assert main(["manifest", "--request-url", url]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands][:2] == ["/ember-steer", "/ember-features"]
    assert {c["url"] for c in commands} == {url}
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["settings"]["event_subscriptions"]["request_url"] == url
    assert manifest["settings"]["interactivity"]["request_url"] == url


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        ([], ["SLACK_BOT_TOKEN is not set", "SLACK_APP_TOKEN is not set"]),
        (["--http", "--port", "3000"], ["SLACK_BOT_TOKEN is not set", "SLACK_SIGNING_SECRET"]),
    ],
)
def test_missing_credentials_are_named_one_line_each(clean_env, capsys, argv, missing):
    clean_env.setenv("GOODFIRE_BASE_URL", "http://127.0.0.1:9")
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == len(missing)
    assert all(line.startswith(start) for line, start in zip(lines, missing, strict=True))


async def test_wrong_or_unreachable_slack_fails_fast_with_a_clear_message(settings: Settings):
    async with FakeSlack() as slack:
        wrong = settings_for(slack, bot_token="xoxb-wrong")
        async with open_context(settings) as ctx:
            with pytest.raises(
                SlackSetupError, match="Slack rejected SLACK_BOT_TOKEN: invalid_auth"
            ):
                await SlackBot(ctx, wrong).verify()
        right = settings_for(slack)
        async with open_context(settings) as ctx:
            with pytest.raises(SlackSetupError, match="Slack rejected SLACK_APP_TOKEN"):
                await SlackBot(ctx, right).verify(app_token="xapp-wrong")
            await SlackBot(ctx, right).verify(app_token=slack.app_token)
    offline = settings_for(slack, api_url="http://127.0.0.1:9/api/")
    async with open_context(settings) as ctx:
        with pytest.raises(SlackSetupError, match="Could not reach Slack at http://127.0.0.1:9"):
            await SlackBot(ctx, offline).verify()


async def test_main_serves_http_mode_and_stops_cleanly_on_sigterm(
    tmp_path: Path, fake_ember: FakeEmber
):
    async with FakeSlack() as slack:
        port = free_port()
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_SIGNING_SECRET": slack.signing_secret,
            "SLACK_API_URL": slack.api_url,
            "GOODFIRE_BASE_URL": fake_ember.base_url,
            "GOODFIRE_API_KEY": fake_ember.api_key,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        }
        code = "import sys; from adapters.slack.app import main; sys.exit(main(sys.argv[1:]))"
        argv = ["--http", "--host", "127.0.0.1", "--port", str(port)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *argv, env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
        )
        fields = slack.slash_command("/steer", "pirate 0.5")
        body = form_body(fields)
        async with aiohttp.ClientSession() as http:
            status = await post_when_up(http, f"http://127.0.0.1:{port}/slack/events", body, slack)
        assert status == 200
        [reply] = await slack.wait_for(slack.responses, what="reply")
        assert '"pirate speech" (#1201) +0.50' in reply.body["text"]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, stderr.decode()
        assert "listening for Slack" in stderr.decode()
        assert slack.bot_token not in stderr.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def post_when_up(http: aiohttp.ClientSession, url: str, body: str, slack: FakeSlack) -> int:
    """POST a signed request once the server accepts connections (it starts in ~1 s)."""
    for _ in range(150):
        try:
            headers = signed_headers(slack.signing_secret, body)
            async with http.post(url, data=body, headers=headers) as response:
                return response.status
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listening at {url}")
