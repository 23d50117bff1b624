"""The console adapter as a user runs it: `python -m adapters console` with piped stdin."""

from __future__ import annotations

import pytest

from bot.settings import Settings, SettingsError, load
from server.model.tiny.vocabulary import TINY_PLANTED
from tests.support.console_helpers import console_env, run_console


async def test_scripted_session_steers_chats_and_survives_restart(tmp_path, fake_ember):
    env = console_env(tmp_path, fake_ember)
    fake_ember.reply_text = "Ahoy there!"
    code, out, err = await run_console("/steer pirate 0.5\nhello bot\n/features\n", env)
    assert code == 0, err
    assert fake_ember.controller_nudges(fake_ember.last_chat_request()) == {1201: 0.5}
    assert "bot> Ahoy there!" in out
    after_reply = out.split("bot> ")[1]
    assert 'Steering on variant "default"' in after_reply and "pirate speech" in after_reply

    code, out, err = await run_console("/features\n", env)
    assert code == 0, err
    assert "pirate speech" in out and "+0.5" in out


async def test_bad_command_prints_one_error_line(tmp_path, fake_ember):
    code, out, _ = await run_console("/steer pirate 5\n", console_env(tmp_path, fake_ember))
    assert code == 0
    assert "error: Value must be between -1 and 1, got 5.\n" in out


async def test_no_backend_explains_how_to_get_one(tmp_path):
    code, out, err = await run_console("hello\n", console_env(tmp_path, None))
    assert code == 2 and out == ""
    assert "ember-bot console --serve tiny" in err


async def test_invalid_settings_fail_with_one_line_per_problem(tmp_path, fake_ember):
    env = console_env(tmp_path, fake_ember) | {"TEMPERATURE": "3", "DATABASE_URL": "mysql://x"}
    code, _, err = await run_console("", env)
    assert code == 2
    assert err.splitlines() == [
        "config error: DATABASE_URL: must look like sqlite:///path/to/file.db or "
        "postgresql://user:password@host/db (got 'mysql://x')",
        "config error: TEMPERATURE: Input should be less than or equal to 2 (got '3')",
    ]


async def test_serve_tiny_demo_works_offline_in_one_command(tmp_path):
    env = console_env(tmp_path, None) | {"HF_HUB_OFFLINE": "1"}
    script = "/steer pirate speech 0.8\nhello\n/inspect\n"
    code, out, err = await run_console(script, env, "--serve", "tiny", cwd=tmp_path)
    assert code == 0, err
    assert '"pirate speech" (#37) +0.80' in out
    reply = out.split("bot> ", 1)[1].split("\n", 1)[0]
    _, pirate_words = TINY_PLANTED["pirate speech"]
    assert any(word in reply.lower() for word in pirate_words), reply
    assert "Top features in the last exchange" in out and "pirate speech" in out.split("Top")[1]


def test_a_bad_database_url_is_named_without_its_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://ember:hunter2@db.example/ember")
    with pytest.raises(SettingsError) as failure:
        load(Settings, _env_file=None)
    (line,) = failure.value.problems
    assert line.startswith("DATABASE_URL: ") and "hunter2" not in line
    assert "'postgresql+asyncpg://ember:***@db.example/ember'" in line
