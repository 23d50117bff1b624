"""bench/bot_load.py end to end at toy size: every part runs and the report survives JSON."""

from __future__ import annotations

import json

from bench.bot_load import Options, measure, parse_options, render
from tests.support.fake_ember import Latency

TOY = Options(
    channels=(3,),
    latency=Latency(first_token=0.02, tokens_per_second=500),
    reply_tokens=5,
    load_seconds=0.3,
    saturation_seconds=0.2,
    burst=12,  # past the shipped backend_max_concurrency of 8, so some wait in line
    stored=20,
    active=4,
    steer_seconds=0.1,
    adapter=True,
)


def test_a_toy_run_measures_every_part_and_prints_json_and_a_table():
    report = json.loads(json.dumps(measure(TOY, "toy")))

    (realistic,) = report["realistic"]
    assert realistic["turns"] >= 3 and realistic["errors"] == 0 and realistic["refused"] == 0
    assert realistic["backend_p50_ms"] >= 20  # the fake's own time, as it reported it
    assert realistic["overhead_p50_ms"] < realistic["turn_p50_ms"]
    assert report["zero_latency"][0]["turns"] >= 3
    burst = report["shipped_defaults_burst"]
    assert burst["turns"] == 12 and burst["longest_queue"] >= 1
    for path in ("service_steer", "store_save_variant"):
        assert report["steering"][path]["writes_per_s"] > 0
    memory = report["memory"]
    assert memory["stored_sessions"] == 20
    assert 0 < memory["rss_started_mb"] <= memory["rss_peak_mb"]
    # A warm turn: the active variant, the user's message, the history, the reply.
    assert report["database_round_trips_per_turn"] == 4
    assert report["event_loop"].split()[0] in ("uvloop", "asyncio")
    verdicts = {t["name"]: t["verdict"] for t in report["targets"]}
    assert verdicts["loop lag p99, 500 concurrent streams"] == "not run"
    assert verdicts["peak RSS, 10k stored / 1k active sessions"] == "not run"

    table = render(report)
    assert "Targets" in table and "service.steer" in table


def test_options_from_the_command_line():
    options, as_json = parse_options(["--quick", "--channels", "1,5", "--json"])
    assert options.channels == (1, 5) and as_json
    assert options.stored < Options().stored  # --quick is smaller
    assert parse_options(["--first-token-ms", "50"])[0].latency.first_token == 0.05
