"""Serving generated labels: `--labels` merges them with published ones (published first unless
a label says `override`), search reports their detection score, and /steer finds features by
them (issue #16)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from bot.app import open_context
from bot.commands.runner import run_text_command
from bot.settings import Settings
from server.api.app import create_app
from server.cli import serve_in_background
from server.labelling.sources import read_label_entries
from server.model.presets import load_preset

PIRATE = 37


def overriding(labels: Path, folder: Path) -> Path:
    """The label file as `ember-bot label --override-published` writes it."""
    records = [json.loads(line) | {"override": True} for line in labels.read_text().splitlines()]
    path = folder / "override.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_published_labels_win_over_generated_ones_unless_they_override(label_files, tmp_path):
    plain = load_preset("tiny", labels=str(label_files.labels)).labels
    assert plain.label(PIRATE) == "pirate speech"  # tiny's own label is the published one
    assert PIRATE not in plain.scores
    override = load_preset("tiny", labels=str(overriding(label_files.labels, tmp_path))).labels
    assert override.label(PIRATE) == "pirate speech: plunder, ahoy, treasure"
    assert override.scores[PIRATE] == 1.0


def test_a_folder_of_sources_merges_published_first_whatever_the_file_order(label_files, tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a-generated.jsonl").write_text(label_files.labels.read_text())
    export = [{"index": str(PIRATE), "description": "sea robbers", "modelId": "x"}]
    (folder / "b-neuronpedia.json").write_text(json.dumps(export))
    entries = read_label_entries(folder, 512)
    assert (entries[PIRATE].text, entries[PIRATE].score) == ("sea robbers", None)
    assert entries[102].text.startswith("formal tone: ") and entries[102].score == 1.0


async def test_the_generated_file_makes_steer_find_the_feature_and_search_shows_its_score(
    label_files, tmp_path, session, alice
):
    bundle = load_preset("tiny", labels=str(overriding(label_files.labels, tmp_path)))
    server = serve_in_background(create_app(bundle))
    try:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            goodfire_base_url=server.base_url,
            goodfire_api_key="",
            database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        )
        async with open_context(settings) as ctx:
            reply = await run_text_command(ctx, "/steer plunder 0.5", session, alice)
            steered = (await ctx.service.variants.active(session)).edits
            listed = await run_text_command(ctx, "/features search plunder", session, alice)
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/inference/v1") as client:
            query: dict[str, str | int] = {
                "query": "plunder",
                "model": bundle.model_id,
                "perPage": 3,
            }
            found = (await client.get("/features/search", params=query)).json()["features"]
    finally:
        server.stop()
    assert not reply.is_error, reply.text
    assert reply.text.endswith('"pirate speech: plunder, ahoy, treasure" (#37) +0.50')
    assert list(steered) == [PIRATE]
    first_hit = listed.text.splitlines()[1]
    assert first_hit.startswith(f"  #{PIRATE}  pirate speech") and "(label score 1.00)" in first_hit
    assert found[0]["index_in_sae"] == PIRATE and found[0]["label_score"] == 1.0
