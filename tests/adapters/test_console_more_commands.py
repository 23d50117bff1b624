"""Issue #9 through the console adapter as a user runs it: `python -m adapters console` with piped
stdin, against FakeEmber and against the tiny preset server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bot.test_more_commands import assert_png
from tests.support.console_helpers import console_env, run_console


async def console(stdin: str, env: dict[str, str], cwd: Path) -> str:
    """Run a scripted console session in `cwd` (where attachments are saved); its stdout."""
    code, out, err = await run_console(stdin, env, cwd=cwd)
    assert code == 0, err
    return out


async def test_compare_inspect_guard_history_and_sharing_in_the_console(tmp_path, fake_ember):
    fake_ember.reply_text = "Arr matey, the pirate ship sails!"
    script = [
        "/steer pirate 0.5",
        "/guard pirate 1.5",
        "/compare a story",
        "hello",
        "/inspect 3 chart",
        "/inspect feature:pirate speech chart",
        "/history steering",
        "/variant export",
    ]
    out = await console("\n".join(script) + "\n", console_env(tmp_path, fake_ember), tmp_path)

    assert "── base ──\nArr matey, the pirate ship sails!\n" in out
    assert "── steered: default · pirate speech +0.5 ──\nArr matey, the pirate ship sails!\n" in out
    base, steered = fake_ember.requests_to("/chat/completions")[:2]
    assert base.json["seed"] == steered.json["seed"] and "controller" not in base.json
    assert steered.json["controller"]["scopes"][0]["event_name"] == "guard:1201"
    assert "— variant default · pirate speech +0.5 · guard pirate speech > 1.5" in out

    png = tmp_path / "inspect.png"
    assert f"[saved {png} · {png.stat().st_size:,} bytes]" in out
    assert_png(png.read_bytes())
    assert "bot: Arr⁽²·⁰⁾ matey,⁽²·⁰⁾ the pirate⁽²·⁰⁾ ship sails!" in out
    assert_png((tmp_path / "inspect-tokens.png").read_bytes())
    assert '· guarded "pirate speech" > 1.5 (variant default)' in out

    exported = tmp_path / "variant-active.json"
    assert f"[saved {exported}" in out
    data = json.loads(exported.read_text())
    assert [e["index_in_sae"] for e in data["edits"]] == [1201] and data["scopes"] == []

    again = await console(
        f"/variant import shared {exported.read_text().replace(chr(10), ' ')}\n/variant export\n",
        console_env(tmp_path, fake_ember),
        tmp_path,
    )
    assert 'Imported variant "shared" with 1 edits; it is now active.' in again
    assert (tmp_path / "variant-active-1.json").exists()  # saved beside, never overwritten


async def test_autosteer_asks_then_applies_and_a_guard_cuts_the_reply_short(tmp_path, tiny_server):
    env = console_env(tmp_path, None) | {
        "GOODFIRE_BASE_URL": tiny_server.base_url,
        "MAX_COMPLETION_TOKENS": "24",
    }
    script = [
        "/autosteer talk like a pirate",
        "n",
        "/autosteer talk like a pirate",
        "yes",
        "/guard #37 1",
        "/steer #37 1",
        "Tell me a story",
    ]
    out = await console("\n".join(script) + "\n", env, tmp_path)

    assert out.count('AutoSteer proposes, for "talk like a pirate":') == 2
    assert "Apply these edits? [y/N] n\n" in out
    assert "cancelled the proposal; nothing changed." in out
    assert "Apply these edits? [y/N] yes\n" in out
    assert 'applied to variant "default": "pirate speech"' in out
    reply = out.split("bot> ")[1]
    assert (
        '[reply cut short] Generation stopped: the guard on "pirate speech" (> 1) fired.' in reply
    )
    assert "· guard pirate speech > 1" in reply
