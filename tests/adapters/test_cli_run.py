"""`ember-bot run`: refuses to start half-configured, and never shows a traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.support.console_helpers import hermetic_env


def run(tmp_path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = hermetic_env() | {"DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "adapters", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_slack_http_mode_without_signing_secret_refuses_to_start(tmp_path):
    result = run(tmp_path, GOODFIRE_BASE_URL="http://127.0.0.1:9", SLACK_BOT_TOKEN="xoxb-1")
    assert result.returncode == 2
    assert "SLACK_SIGNING_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_no_platform_configured_says_which_tokens_to_set(tmp_path):
    result = run(tmp_path, GOODFIRE_BASE_URL="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "No chat platform is configured" in result.stderr


def test_unreachable_slack_is_one_line_not_a_traceback(tmp_path):
    result = run(
        tmp_path,
        GOODFIRE_BASE_URL="http://127.0.0.1:9",
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_APP_TOKEN="xapp-1",
        SLACK_API_URL="http://127.0.0.1:9/api/",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Slack" in result.stderr
