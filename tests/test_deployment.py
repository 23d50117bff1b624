"""Deployment files agree with the code: .env.example, docker-compose.yml, Dockerfile, README."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from adapters.cli import build_parser
from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bot.settings import Settings
from server.cli import build_parser as build_serve_parser

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_CLASSES = (Settings, SlackSettings, DiscordSettings)
SETTINGS_NAMES = {  # the environment variables: the class's env_prefix, then the field name
    f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    for cls in SETTINGS_CLASSES
    for name in cls.model_fields
}


def env_example() -> list[tuple[str, str, str]]:
    """(name, value, the comment line above it) for every setting in .env.example."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    entries = []
    for previous, line in zip(lines, lines[1:], strict=False):
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            entries.append((match.group(1), match.group(2), previous))
    return entries


def test_env_example_lists_every_setting_once_with_an_explanation():
    entries = env_example()
    names = [name for name, _, _ in entries]
    assert sorted(names) == sorted(SETTINGS_NAMES)
    for name, _, comment in entries:
        assert comment.startswith("# ") and len(comment) > 10, name


def test_env_example_loads_to_the_defaults(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    for cls in SETTINGS_CLASSES:
        from_example = cls(_env_file=env_file)  # type: ignore[call-arg]
        defaults = cls(_env_file=None)  # type: ignore[call-arg]
        assert from_example.model_dump() == defaults.model_dump(), cls.__name__


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def cli_commands() -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return set(subparsers.choices)  # type: ignore[union-attr]


def test_every_compose_service_runs_an_existing_cli_command():
    for name, service in compose()["services"].items():
        command = service["command"]
        assert command[0] == "ember-bot", name
        assert command[1] in cli_commands(), name


def test_the_postgres_layer_runs_bot_commands_on_the_postgres_service():
    layer = yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())
    bots = {name: s for name, s in layer["services"].items() if name != "postgres"}
    assert len(bots) >= 3
    for name, service in bots.items():
        assert service["command"][:2] in (["ember-bot", "discord"], ["ember-bot", "slack"]), name
        assert set(service["environment"]) <= SETTINGS_NAMES, name
        assert "@postgres:5432/" in service["environment"]["DATABASE_URL"], name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
    shards = [s["environment"].get("DISCORD_SHARD_IDS") for s in bots.values()]
    assert sorted(s for s in shards if s is not None) == ["0", "1"]


def test_every_env_var_compose_passes_is_a_setting():
    passed = set()
    for service in compose()["services"].values():
        passed |= set(service.get("environment", {}))
    assert passed - {"HF_TOKEN"} <= SETTINGS_NAMES  # HF_TOKEN is read by huggingface_hub


def test_compose_serve_commands_parse_and_the_gpu_service_uses_every_gpu():
    for name, service in compose()["services"].items():
        if service["command"][1] != "serve":
            continue
        # Compose fills ${NAME:-default} from the environment; parse with the defaults.
        argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in service["command"][2:]]
        args = build_serve_parser().parse_args(argv)
        if "gpu" in service.get("profiles", []):
            assert args.device_map == "auto", name  # all the GPUs it reserves, not just cuda:0
            assert args.quantize == "none" and args.dtype == "bfloat16"
            assert "server,gpu" in service["build"]["args"]["SERVER_EXTRAS"]  # bitsandbytes
            assert 'pip install ".[$SERVER_EXTRAS]"' in (ROOT / "Dockerfile").read_text()


def test_every_build_target_exists_in_the_dockerfile():
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    for name, service in compose()["services"].items():
        build = service.get("build") or {}
        assert build.get("target") in stages, name


def test_readme_documents_every_setting_and_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in SETTINGS_NAMES if f"`{name}`" not in readme]
    assert missing == []
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"\n{ci}\n" in readme
