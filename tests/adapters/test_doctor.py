"""`ember-bot doctor` against a misconfigured .env and against a good setup with the tiny server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from tests.support.console_helpers import hermetic_env


def run_doctor(cwd, env_file: str) -> subprocess.CompletedProcess[str]:
    (cwd / ".env").write_text(env_file)
    return subprocess.run(
        [sys.executable, "-m", "adapters", "doctor"],
        cwd=cwd,
        env=hermetic_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_misconfigured_env_names_each_problem_on_its_own_line(tmp_path):
    result = run_doctor(
        tmp_path,
        f"GOODFIRE_BASE_URL=http://127.0.0.1:{closed_port()}\n"
        "DISCORD_BOT_TOKEN=not-a-token\n"
        "SLACK_BOT_TOKEN=xapp-swapped\n"
        "SLACK_SIGNING_SECRET=short\n",
    )
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert [p.split(":")[0] for p in problems] == [
        "PROBLEM  backend",
        "PROBLEM  discord",
        "PROBLEM  slack",
        "PROBLEM  slack",
    ]
    assert "unavailable" in problems[0]
    assert "SLACK_BOT_TOKEN should start with xoxb-" in problems[2]
    assert "not-a-token" not in result.stdout  # never echo secrets


def test_invalid_values_are_reported_before_any_check(tmp_path):
    result = run_doctor(tmp_path, "TOP_P=7\nGOODFIRE_BASE_URL=localhost:8000\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: GOODFIRE_BASE_URL: must start with http:// or https:// "
        "(got 'localhost:8000')",
        "config error: TOP_P: Input should be less than or equal to 1 (got '7')",
    ]


def test_good_setup_with_the_tiny_server_passes(tmp_path, tiny_server):
    result = run_doctor(tmp_path, f"GOODFIRE_BASE_URL={tiny_server.base_url}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROBLEM" not in result.stdout
    assert f"ok       backend: {tiny_server.base_url} serves ember-tiny" in result.stdout
    assert (tmp_path / "data" / "ember-bot.db").exists()


def test_doctor_reports_what_the_tiny_server_serves(tmp_path, tiny_server, tiny_bundle):
    result = run_doctor(tmp_path, f"GOODFIRE_BASE_URL={tiny_server.base_url}\n")
    served = [line for line in result.stdout.splitlines() if line.startswith("ok       served")]
    labels = len(tiny_bundle.labels)
    assert served == [
        f"ok       served: model ember-tiny, SAE ember-tiny-sae, layer 1, {labels} labels, "
        "lexical + activation search, transformers engine"
    ]
    assert labels > 0


async def test_doctor_says_what_a_backend_without_those_facts_serves_is_unknown(
    tmp_path, fake_ember
):
    # The fake, like hosted Ember, has no /health with the served SAE, layer and labels.
    result = await asyncio.to_thread(
        run_doctor,
        tmp_path,
        f"GOODFIRE_BASE_URL={fake_ember.base_url}\nGOODFIRE_API_KEY={fake_ember.api_key}\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    served = [line for line in result.stdout.splitlines() if "served" in line]
    assert served[-1] == (
        "ok       served: SAE, layer, label count and search mode unknown "
        "(the backend does not report them, as hosted Ember does not)"
    )
